'use strict'

/**
 * Runs a fixture in a child Node process and follows its JSON-line reports on stdout.
 * Every child is killed (by its own pid) if the test did not see it exit, so a hang fails the
 * test instead of hanging Jest.
 */

const path = require('path')
const { spawn } = require('child_process')

const FIXTURES = path.join(__dirname, '..', 'fixtures')
const children = new Set()

class Child {
  constructor(fixture, args = []) {
    const env = { ...process.env }
    delete env.SLUICE_LOG
    this.started = Date.now()
    this.proc = spawn(process.execPath, [path.join(FIXTURES, fixture), ...args.map(String)], {
      cwd: path.join(__dirname, '..', '..'),
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    children.add(this)
    this.reports = []
    this.stderr = ''
    this.waiters = []
    this.exit = null
    let buf = ''
    this.proc.stdout.setEncoding('utf8')
    this.proc.stdout.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        try {
          this.reports.push({ at: Date.now(), ...JSON.parse(line) })
        } catch {
          this.reports.push({ at: Date.now(), event: 'raw', line })
        }
        this._notify()
      }
    })
    this.proc.stderr.setEncoding('utf8')
    this.proc.stderr.on('data', (d) => {
      this.stderr += d
    })
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => {
        this.exit = { code, signal, at: Date.now(), ms: Date.now() - this.started }
        children.delete(this)
        this._notify()
        resolve(this.exit)
      })
    })
  }

  _notify() {
    for (const w of this.waiters.splice(0)) w()
  }

  /** Resolves with the first report of `event`; rejects on timeout or if the child exits first. */
  async report(event, ms = 5000) {
    const end = Date.now() + ms
    for (;;) {
      const r = this.reports.find((x) => x.event === event)
      if (r) return r
      if (this.exit) {
        throw new Error(`child exited (${JSON.stringify(this.exit)}) before '${event}'; stderr: ${this.stderr}`)
      }
      const left = end - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for child report '${event}'; stderr: ${this.stderr}`)
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  /**
   * Resolves with { code, signal, ms } once the child exits, or with { timedOut: true } after `ms`
   * (the child is then killed with SIGKILL so nothing leaks).
   */
  async waitExit(ms) {
    let timer
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => resolve({ timedOut: true }), ms)
    })
    const r = await Promise.race([this.exited, timedOut])
    clearTimeout(timer)
    if (r.timedOut) await this.kill('SIGKILL')
    return r
  }

  /** Sends `signal` to this child (by its pid) and waits for its exit. */
  async kill(signal = 'SIGTERM') {
    if (!this.exit) this.proc.kill(signal)
    return this.exited
  }
}

/** Kills every child a test left running. */
async function killAll() {
  await Promise.all([...children].map((c) => c.kill('SIGKILL')))
}

module.exports = { Child, killAll }
