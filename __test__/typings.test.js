'use strict'
// The typings users compile against: the generated index.d.ts is committed in sync with src/
// (npm test regenerates it before Jest runs), and lib/sluice.d.ts type-checks real usage.
const { execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')

test('the committed index.d.ts and index.js match what napi generates from src/', () => {
  if (!fs.existsSync(path.join(root, '.git'))) {
    // Not a git checkout (e.g. an installed package): nothing to compare with.
    return
  }
  const diff = execFileSync('git', ['diff', '--stat', '--', 'index.d.ts', 'index.js'], { cwd: root }).toString()
  expect(diff).toBe('')
})

test('the README usage type-checks under --strict', () => {
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  const fixture = path.join(__dirname, 'fixtures', 'types-usage.ts')
  let out = ''
  try {
    execFileSync(process.execPath, [tsc, '--noEmit', '--strict', '--types', 'node', '--target', 'es2020', '--moduleResolution', 'node', fixture], {
      cwd: root,
      stdio: 'pipe',
    })
  } catch (err) {
    out = `${err.stdout}${err.stderr}`
  }
  expect(out).toBe('')
}, 60000)
