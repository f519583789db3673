'use strict'

/**
 * Headless Chromium for the browser tests (the Debian package `chromium`, which
 * scripts/ensure-tools.sh installs, driven by playwright-core): its launch with the flags a
 * closed-network machine needs, and a wait on a page's recorded events.
 */

const fs = require('fs')

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'

/**
 * Launches Chromium headless; `extraArgs` are added to the flags every browser test uses.
 *
 * @param {string[]} [extraArgs]
 */
async function launchChromium(extraArgs = []) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install the Debian package chromium (bash scripts/ensure-tools.sh does)`)
  }
  const { chromium } = require('playwright-core')
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', ...extraArgs],
    timeout: 60000,
  })
}

/** Resolves with the page's events (`window.events`) once `pred()` holds, polled inside the page. */
async function pageEvents(page, pred, what, ms = 10000) {
  try {
    await page.waitForFunction(pred, undefined, { timeout: ms, polling: 20 })
  } catch (err) {
    const events = await page.evaluate(() => window.events).catch(() => 'unavailable')
    throw new Error(`page never showed ${what} within ${ms} ms; its events: ${JSON.stringify(events)} (${err.message})`)
  }
  return page.evaluate(() => window.events)
}

module.exports = { CHROMIUM, launchChromium, pageEvents }
