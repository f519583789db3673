'use strict'
// Loads the native part of sluice through the napi-rs loader (../index.js), which tries, for this
// platform, `sluice.<platform>.node` next to it (built from source by scripts/install.js, or by
// `npm run build` in a development checkout) and then the prebuilt package `sluice-<platform>`.
//
// When neither loads, the generated loader's error ("Cannot find native binding. npm has a bug
// related to optional dependencies ...") points the wrong way for sluice, whose usual cause is an
// install script that never ran: npm skips it with --ignore-scripts, for a package denied in the
// project's "allowScripts", and (newer npm) for any dependency not yet approved. This module turns
// that into an ERR_SLUICE_NATIVE_MISSING error that says what was tried and how to fix it.

const fs = require('fs')
const path = require('path')

const { platformArchABI } = require('./platform')

const pkgDir = path.join(__dirname, '..')

function isDevelopmentCheckout() {
  return fs.existsSync(path.join(pkgDir, '.git')) || fs.existsSync(path.join(pkgDir, '__test__'))
}

function nativeMissingError(cause) {
  const target = platformArchABI()
  const file = path.join(pkgDir, `sluice.${target}.node`)
  const installScript = path.join(pkgDir, 'scripts', 'install.js')
  const fileState = fs.existsSync(file)
    ? `present but failed to load: ${firstLine(findCause(cause, `sluice.${target}.node`))}`
    : 'not found'
  const lines = [
    `sluice: no native binary could be loaded for this platform (${target}).`,
    `  tried ${file}: ${fileState}`,
    `  tried the prebuilt package sluice-${target}: ${packageState(target, cause)}`,
  ]
  if (isDevelopmentCheckout()) {
    lines.push('This is a development checkout of sluice: build the native part with `npm run build`.')
  } else if (fs.existsSync(file)) {
    lines.push(
      'The binary is there but does not load here (built for another system or damaged). Rebuild it',
      'from source (needs the Rust toolchain, https://rustup.rs) with:',
      `  node ${JSON.stringify(installScript)}`,
    )
  } else {
    lines.push(
      'sluice builds its native part from source when it is installed: its install script runs',
      '`cargo build`. Most likely npm skipped that script: npm does with --ignore-scripts, when',
      'your project\'s "allowScripts" denies sluice, and, where npm blocks install scripts it has',
      'not been told to allow, until you approve it. To build it now, run in your project:',
      '  npm install-scripts approve sluice && npm rebuild sluice',
      '(with an npm that has no `install-scripts` command: npm rebuild sluice), or run the build directly:',
      `  node ${JSON.stringify(installScript)}`,
      'The build needs the Rust toolchain (cargo): https://rustup.rs',
    )
  }
  const err = new Error(lines.join('\n'))
  err.code = 'ERR_SLUICE_NATIVE_MISSING'
  err.platform = target
  err.cause = cause
  return err
}

// The napi-rs loader chains the per-candidate errors through `cause`.
function causes(err) {
  const out = []
  for (let e = err, i = 0; e && i < 20; e = e.cause, i++) out.push(e)
  return out
}

function findCause(err, needle) {
  const hit = causes(err).find((e) => e !== err && String(e && e.message).includes(needle))
  return hit ? hit.message : String(err && err.message)
}

function packageState(target, err) {
  const name = `sluice-${target}`
  const hit = causes(err).find((e) => e !== err && String(e && e.message).includes(name))
  if (!hit || /Cannot find module/.test(hit.message)) return 'not installed'
  return `failed to load: ${firstLine(hit.message)}`
}

function firstLine(s) {
  return String(s).split('\n')[0]
}

let binding
try {
  binding = require('../index.js')
} catch (err) {
  // The loader's "no candidate loaded" errors (the per-candidate errors are in err.cause). Anything
  // else thrown while loading is not about a missing binary: pass it on unchanged.
  if (/^(Cannot find native binding|Failed to load native binding)/.test(String(err && err.message))) {
    throw nativeMissingError(err)
  }
  throw err
}

module.exports = binding
