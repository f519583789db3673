#!/usr/bin/env node
'use strict'
// sluice's install script (package.json "scripts.install"): builds the native part from source
// with cargo when no loadable binary is there yet. The napi CLI is a devDependency and is not
// installed with sluice, so this calls `cargo build` itself and copies the library to the file
// the napi-rs loader (index.js) tries first, `sluice.<platform>.node` next to index.js.
//
//   node scripts/install.js           build unless a loadable binary is already there
//   node scripts/install.js --force   build even so (also in a development checkout)
//
// Environment:
//   SLUICE_SKIP_BUILD=1          do not build (require('sluice') then fails with
//                                ERR_SLUICE_NATIVE_MISSING until a binary is in place)
//   SLUICE_CARGO_TARGET_DIR=dir  cargo's target directory, kept after the build (a build cache,
//                                e.g. for CI). Default: a fresh temporary directory, removed after.
//   CARGO=path                   the cargo to run (default: cargo on PATH, then
//                                $CARGO_HOME/bin or ~/.cargo/bin, where rustup installs it)
//
// Exit status: 0 when a loadable binary is in place (or nothing was to be done), 1 otherwise,
// with the reason on stderr; npm then fails the install and shows it.

const { spawnSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { platformArchABI } = require('../lib/platform')

const pkgDir = path.join(__dirname, '..')
const force = process.argv.includes('--force')

function log(msg) {
  process.stderr.write(`sluice: ${msg}\n`)
}

class BuildError extends Error {}

// Throws: main()'s `finally` removes the temporary target directory, then the message is printed.
function fail(msg) {
  throw new BuildError(msg)
}

// Loads index.js in a child process, so a broken binary cannot take this script down with it.
// Returns null when it loads, else the loader's error text.
function loadError() {
  const r = spawnSync(process.execPath, ['-e', 'require(process.argv[1])', path.join(pkgDir, 'index.js')], {
    cwd: pkgDir,
    encoding: 'utf8',
    env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: '' },
  })
  return r.status === 0 ? null : `${r.stderr || r.error || `exit status ${r.status}`}`.trim()
}

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK)
    return fs.statSync(file).isFile()
  } catch {
    return false
  }
}

function findCargo() {
  const exe = process.platform === 'win32' ? 'cargo.exe' : 'cargo'
  if (process.env.CARGO) return isExecutable(process.env.CARGO) ? process.env.CARGO : null
  const dirs = (process.env.PATH || '').split(path.delimiter).filter(Boolean)
  const cargoHome = process.env.CARGO_HOME || path.join(os.homedir(), '.cargo')
  dirs.push(path.join(cargoHome, 'bin'))
  for (const dir of dirs) {
    const file = path.join(dir, exe)
    if (isExecutable(file)) return file
  }
  return null
}

function builtLibrary(targetDir) {
  const dir = path.join(targetDir, 'release')
  if (process.platform === 'win32') return path.join(dir, 'sluice.dll')
  if (process.platform === 'darwin') return path.join(dir, 'libsluice.dylib')
  return path.join(dir, 'libsluice.so')
}

function main() {
  const target = platformArchABI()
  const dest = path.join(pkgDir, `sluice.${target}.node`)

  if (process.env.SLUICE_SKIP_BUILD === '1' && !force) {
    log(`SLUICE_SKIP_BUILD=1: not building the native part for ${target}; require('sluice') fails until ${dest} exists.`)
    return
  }
  if (!force && (fs.existsSync(path.join(pkgDir, '.git')) || fs.existsSync(path.join(pkgDir, '__test__')))) {
    log('development checkout: no install-time build here, build with `npm run build`.')
    return
  }
  if (!force) {
    const err = loadError()
    if (err === null) {
      log(`a native binary for ${target} is already in place (next to index.js or the package sluice-${target}); nothing to build.`)
      return
    }
  }

  const cargo = findCargo()
  if (!cargo) {
    fail(
      `cannot build the native part for ${target}: the Rust toolchain (cargo) was not found` +
        `${process.env.CARGO ? ` (CARGO=${process.env.CARGO} is not an executable)` : ' on PATH or in $CARGO_HOME/bin (~/.cargo/bin)'}.\n` +
        'No prebuilt binary for this platform is installed, so sluice builds from source, which needs Rust:\n' +
        '  install it from https://rustup.rs (e.g. curl --proto \'=https\' --tlsv1.2 -sSf https://sh.rustup.rs | sh),\n' +
        `  then run the install again (for a sluice already in node_modules: node ${JSON.stringify(__filename)}).\n` +
        `Or install a prebuilt binary package, sluice-${target}, if one is published for your platform.\n` +
        'To install sluice without its native part for now, set SLUICE_SKIP_BUILD=1 (require(\'sluice\') then\n' +
        'throws ERR_SLUICE_NATIVE_MISSING until it is built).',
    )
  }

  const keepTarget = !!process.env.SLUICE_CARGO_TARGET_DIR
  const targetDir = keepTarget
    ? path.resolve(process.env.SLUICE_CARGO_TARGET_DIR)
    : fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-cargo-'))
  try {
    log(`building the native part for ${target} from source with ${cargo} (cargo build --release; this takes a minute or two)`)
    const r = spawnSync(
      cargo,
      ['build', '--release', '--locked', '--lib', '--manifest-path', path.join(pkgDir, 'Cargo.toml')],
      {
        cwd: pkgDir,
        stdio: ['ignore', 'inherit', 'inherit'],
        env: { ...process.env, CARGO_TARGET_DIR: targetDir },
      },
    )
    if (r.error) fail(`could not run ${cargo}: ${r.error.message}`)
    if (r.status !== 0) {
      fail(
        `cargo build failed (${r.signal ? `signal ${r.signal}` : `exit status ${r.status}`}); its output is above.\n` +
          'The build needs a working Rust toolchain (https://rustup.rs) and, on first build, access to crates.io.',
      )
    }
    const lib = builtLibrary(targetDir)
    if (!fs.existsSync(lib)) fail(`cargo build succeeded but ${lib} is missing`)
    // Copy beside, then rename: a process loading the old file never sees a half-written one.
    const tmp = `${dest}.${process.pid}.tmp`
    fs.copyFileSync(lib, tmp)
    fs.renameSync(tmp, dest)
  } finally {
    if (!keepTarget) fs.rmSync(targetDir, { recursive: true, force: true })
  }

  const err = loadError()
  if (err !== null) fail(`built ${dest}, but it does not load:\n${err}`)
  log(`built ${dest}`)
}

try {
  main()
} catch (err) {
  process.stderr.write(`\nsluice: ${err instanceof BuildError ? err.message : err.stack}\n\n`)
  process.exitCode = 1
}
