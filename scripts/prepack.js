#!/usr/bin/env node
'use strict'
// `npm pack` / `npm publish` (package.json "scripts.prepack"): the tarball carries the native
// binary of the machine it is packed on, `sluice.<platform>.node` next to index.js, where the
// napi-rs loader looks first; `npm install <tarball>` on that platform then needs no Rust
// toolchain (scripts/install.js finds a loadable binary and builds nothing). On other platforms
// the install script builds from the sources the tarball also carries, as before.
//
// This script builds nothing (a build here would overwrite a .node that running processes may
// have loaded); it checks that the binary is there, is cargo's release build (`npm run build`) and
// is not older than the Rust sources, and fails the pack otherwise.
//
//   SLUICE_PACK_WITHOUT_BINARY=1   pack without checking (the release workflow packs the root
//                                  package after removing every .node: the binaries go in the
//                                  per-platform packages under npm/)
//   SLUICE_PACK_PREBUILT=1         the binary was built elsewhere (the release workflow's build
//                                  job): require it, but not cargo's output to compare it with

const fs = require('fs')
const path = require('path')
const { platformArchABI } = require('../lib/platform')

const root = path.join(__dirname, '..')

function fail(msg) {
  process.stderr.write(`\nsluice prepack: ${msg}\n\n`)
  process.exit(1)
}

function newestSource() {
  let newest = { file: null, mtime: 0 }
  const visit = (file) => {
    const st = fs.statSync(file)
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(file)) visit(path.join(file, e))
    } else if (st.mtimeMs > newest.mtime) {
      newest = { file, mtime: st.mtimeMs }
    }
  }
  for (const f of ['src', 'Cargo.toml', 'Cargo.lock', 'build.rs']) visit(path.join(root, f))
  return newest
}

function main() {
  if (process.env.SLUICE_PACK_WITHOUT_BINARY === '1') {
    const present = fs.readdirSync(root).filter((f) => /^sluice\..*\.node$/.test(f))
    if (present.length) fail(`SLUICE_PACK_WITHOUT_BINARY=1, but ${present.join(', ')} would be packed: remove them first`)
    process.stderr.write('sluice prepack: packing without a native binary (SLUICE_PACK_WITHOUT_BINARY=1)\n')
    return
  }
  const target = platformArchABI()
  const name = `sluice.${target}.node`
  const binary = path.join(root, name)
  const build = 'build it with `npm run build` (release), then pack again'
  if (!fs.existsSync(binary)) fail(`${name} is missing: ${build}`)
  if (process.env.SLUICE_PACK_PREBUILT === '1') {
    process.stderr.write(`sluice prepack: packing ${name} as built elsewhere (SLUICE_PACK_PREBUILT=1)\n`)
    return
  }
  const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(root, 'target')
  const libName = process.platform === 'win32' ? 'sluice.dll' : process.platform === 'darwin' ? 'libsluice.dylib' : 'libsluice.so'
  // `napi build --platform --release` builds for the host triple (target/<triple>/release); a plain
  // `cargo build --release` writes target/release.
  const candidates = [path.join(targetDir, 'release', libName)]
  if (fs.existsSync(targetDir)) {
    for (const e of fs.readdirSync(targetDir)) candidates.push(path.join(targetDir, e, 'release', libName))
  }
  const bytes = fs.readFileSync(binary)
  const same = candidates.find((f) => fs.existsSync(f) && fs.statSync(f).size === bytes.length && fs.readFileSync(f).equals(bytes))
  if (!same) fail(`${name} is not the release build in ${targetDir} (a debug build, or another checkout's): ${build}`)
  const src = newestSource()
  if (fs.statSync(binary).mtimeMs < src.mtime) fail(`${name} is older than ${path.relative(root, src.file)}: ${build}`)
  process.stderr.write(`sluice prepack: packing ${name} (${(bytes.length / 1048576).toFixed(1)} MiB, the release build ${path.relative(root, same)})\n`)
}

main()
