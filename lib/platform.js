'use strict'
// The `<platform>` part of the file and package names the napi-rs loader (index.js) tries,
// e.g. `linux-x64-gnu`: shared by lib/native.js (the error it throws) and scripts/install.js (the
// file it builds). Plain Node, no native code: it must load when the binary is missing.

const fs = require('fs')

function platformArchABI() {
  const { platform, arch } = process
  if (platform === 'linux') {
    const musl = isMusl()
    if (arch === 'arm') return musl ? 'linux-arm-musleabihf' : 'linux-arm-gnueabihf'
    if (arch === 'ppc64' || arch === 's390x') return `linux-${arch}-gnu`
    return `linux-${arch}-${musl ? 'musl' : 'gnu'}`
  }
  if (platform === 'win32') {
    if (arch === 'x64') {
      const v = (process.config && process.config.variables) || {}
      return v.shlib_suffix === 'dll.a' || v.node_target_type === 'shared_library' ? 'win32-x64-gnu' : 'win32-x64-msvc'
    }
    return `win32-${arch}-msvc`
  }
  if (platform === 'android' && arch === 'arm') return 'android-arm-eabi'
  return `${platform}-${arch}`
}

function isMusl() {
  try {
    return fs.readFileSync('/usr/bin/ldd', 'utf8').includes('musl')
  } catch {
    const report = process.report && typeof process.report.getReport === 'function' ? process.report.getReport() : null
    return !!(report && report.header && !report.header.glibcVersionRuntime)
  }
}

module.exports = { platformArchABI }
