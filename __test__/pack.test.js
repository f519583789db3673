'use strict'
// sluice as an npm package: `npm pack` in this repository, then `npm install <tarball>` into
// separate plain projects (fresh temporary directories with nothing else from the repository).
// The tarball carries the release binary of this platform (scripts/prepack.js checks it is the
// release build): installed here with no cargo anywhere on PATH or in HOME, it works at once.
// For a platform with no binary in the tarball (the same tarball with the .node taken out: what
// a user elsewhere gets), the install builds the native part from source with cargo
// (scripts/install.js), or, without cargo, stops with a clear message; when npm skips install
// scripts, require('sluice') fails with ERR_SLUICE_NATIVE_MISSING and says how to fix it. Real
// npm, real cargo, real sockets. One cold cargo build (~1-2 min on 2 cores), shared through
// SLUICE_CARGO_TARGET_DIR with the later rebuild; the default (temporary, removed) target
// directory is covered with a stand-in cargo that hands over the binary the real build produced.
const { spawnSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

const root = path.join(__dirname, '..')
const rootPkg = require('../package.json')

let work // everything this file creates lives here; removed in afterAll
let tarball // as npm pack made it: with this platform's binary
let sourceTarball // the same without the binary: a platform no prebuilt binary is packed for
let packed // npm pack --json result for the tarball
let cargoTarget // SLUICE_CARGO_TARGET_DIR for the real builds (a cache between them)
let builtBinary // the .node the real install-time build produced (project A)

// The file the napi-rs loader (index.js) tries first on this machine (the tests check the name
// on linux-x64-gnu, the one target package.json lists; elsewhere they still run, less precisely).
const glibc = process.platform === 'linux' && !!process.report.getReport().header.glibcVersionRuntime
const nativeName = glibc && process.arch === 'x64' ? 'sluice.linux-x64-gnu.node' : null

function npmCli() {
  if (process.env.npm_execpath && /npm-cli\.js$/.test(process.env.npm_execpath)) return process.env.npm_execpath
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const file = path.join(dir, 'npm')
    if (fs.existsSync(file)) {
      const real = fs.realpathSync(file)
      const cli = path.join(path.dirname(real), 'npm-cli.js')
      return fs.existsSync(cli) ? cli : real
    }
  }
  throw new Error('npm not found on PATH')
}

// The environment of a user's shell: without the npm_* variables `npm test` sets for its
// children (npm_config_* would otherwise configure the nested npm) and without sluice's knobs.
function cleanEnv(extra = {}) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) && k.toLowerCase() !== 'npm_config_cache') continue
    if (/^(SLUICE_|NAPI_RS_)/.test(k) || k === 'INIT_CWD') continue
    env[k] = v
  }
  return { ...env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false', ...extra }
}

function run(file, args, { cwd, env = cleanEnv(), timeout = 60000 } = {}) {
  const r = spawnSync(file, args, { cwd, env, encoding: 'utf8', timeout, maxBuffer: 64 << 20 })
  if (r.error) throw r.error
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, out: `${r.stdout}${r.stderr}` }
}

function npm(args, opts) {
  return run(process.execPath, [npmCli(), ...args], opts)
}

function expectOk(r, what) {
  if (r.status !== 0) throw new Error(`${what} exited with ${r.status}${r.signal ? ` (${r.signal})` : ''}:\n${r.out}`)
}

// A plain project, as `npm init -y` makes it.
function newProject(name) {
  const dir = path.join(work, name)
  fs.mkdirSync(dir)
  expectOk(npm(['init', '-y'], { cwd: dir }), 'npm init -y')
  return dir
}

function editPackageJson(dir, edit) {
  const file = path.join(dir, 'package.json')
  const pkg = JSON.parse(fs.readFileSync(file, 'utf8'))
  edit(pkg)
  fs.writeFileSync(file, `${JSON.stringify(pkg, null, 2)}\n`)
}

// Run in a consumer project: the core API over a real socket (a raw RFC 6455 client, so no
// WebSocket client package or Node flag is needed), plus sluice/ws through require and import.
const CONSUMER_CJS = String.raw`'use strict'
const crypto = require('crypto')
const http = require('http')
const { Server, Priority } = require('sluice')
const wsFacade = require('sluice/ws')

function receiveOneFrame(port) {
  return new Promise((resolve, reject) => {
    const key = crypto.randomBytes(16).toString('base64')
    const req = http.request({ host: '127.0.0.1', port, path: '/feed', headers: {
      Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Key': key, 'Sec-WebSocket-Version': '13' } })
    req.on('response', (res) => reject(new Error('no upgrade, HTTP ' + res.statusCode)))
    req.on('error', reject)
    req.on('upgrade', (res, socket, head) => {
      const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64')
      if (res.headers['sec-websocket-accept'] !== accept) return reject(new Error('bad Sec-WebSocket-Accept'))
      let buf = head
      const parse = () => {
        if (buf.length < 2) return
        let len = buf[1] & 0x7f
        let off = 2
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4 }
        if (buf.length < off + len) return
        socket.destroy()
        resolve({ fin: (buf[0] & 0x80) !== 0, opcode: buf[0] & 0x0f, masked: (buf[1] & 0x80) !== 0,
          text: buf.subarray(off, off + len).toString('utf8') })
      }
      socket.on('data', (d) => { buf = Buffer.concat([buf, d]); parse() })
      socket.on('error', reject)
      parse()
    })
    req.end()
  })
}

const timer = setTimeout(() => { console.error('consumer: timed out'); process.exit(2) }, 20000)
;(async () => {
  const server = new Server({ host: '127.0.0.1', port: 0 })
  const seen = []
  server.on('connection', (conn, request) => {
    seen.push(request.url)
    server.broadcast('hello from sluice', Priority.Normal)
  })
  const { port } = await server.listen()
  const frame = await receiveOneFrame(port)
  await server.close()
  clearTimeout(timer)
  console.log(JSON.stringify({
    resolved: require.resolve('sluice'),
    frame,
    seen,
    facade: { type: typeof wsFacade, WebSocketServer: typeof wsFacade.WebSocketServer, OPEN: wsFacade.OPEN },
  }))
})().catch((err) => { console.error(err); process.exit(1) })
`

const CONSUMER_MJS = `import WebSocket, { WebSocketServer } from 'sluice/ws'
import { createRequire } from 'module'
import * as sluice from 'sluice'
const require = createRequire(import.meta.url)
console.log(JSON.stringify({
  WebSocket: typeof WebSocket,
  WebSocketServer: typeof WebSocketServer,
  sameAsRequire: WebSocket === require('sluice/ws') && WebSocketServer === require('sluice/ws').WebSocketServer,
  Server: typeof sluice.Server,
}))
`

function checkConsumer(dir, env = cleanEnv()) {
  fs.writeFileSync(path.join(dir, 'consumer.cjs'), CONSUMER_CJS)
  fs.writeFileSync(path.join(dir, 'consumer.mjs'), CONSUMER_MJS)
  const cjs = run(process.execPath, ['consumer.cjs'], { cwd: dir, env, timeout: 30000 })
  expectOk(cjs, 'consumer.cjs')
  const got = JSON.parse(cjs.stdout.trim().split('\n').pop())
  expect(got.resolved).toBe(path.join(dir, 'node_modules', 'sluice', 'lib', 'sluice.js'))
  expect(got.frame).toEqual({ fin: true, opcode: 1, masked: false, text: 'hello from sluice' })
  expect(got.seen).toEqual(['/feed'])
  expect(got.facade).toEqual({ type: 'function', WebSocketServer: 'function', OPEN: 1 })

  const esm = run(process.execPath, ['consumer.mjs'], { cwd: dir, env, timeout: 30000 })
  expectOk(esm, 'consumer.mjs')
  expect(JSON.parse(esm.stdout.trim())).toEqual({
    WebSocket: 'function',
    WebSocketServer: 'function',
    sameAsRequire: true,
    Server: 'function',
  })
}

// Types resolve through the package's "exports" (node16 resolution, as a TS user compiles).
function checkTypes(dir) {
  fs.writeFileSync(path.join(dir, 'check.mts'), [
    "import { Server, Priority } from 'sluice'",
    "import WebSocket, { WebSocketServer } from 'sluice/ws'",
    "import { collectMetrics } from 'sluice/prometheus'",
    "const s: Server = new Server({ port: 0 })",
    's.broadcast("x", Priority.Low)',
    'const n: number = WebSocket.OPEN',
    'const names: string[] = collectMetrics(s, { register: { registerMetric() {}, removeSingleMetric() {}, getSingleMetric() {} } }).names',
    'export { n, names, WebSocketServer }',
    '',
  ].join('\n'))
  const tsc = run(process.execPath, [
    path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict',
    '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2020',
    '--typeRoots', path.join(root, 'node_modules', '@types'), '--types', 'node', 'check.mts',
  ], { cwd: dir, timeout: 60000 })
  expect(tsc.out).toBe('')
  expect(tsc.status).toBe(0)
}

// A PATH with node, sh and coreutils only, and a HOME without ~/.cargo: no Rust toolchain anywhere.
function noRustEnv() {
  const bin = path.join(work, 'bin-no-rust')
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(bin)
    fs.symlinkSync(process.execPath, path.join(bin, 'node'))
    fs.symlinkSync('/bin/sh', path.join(bin, 'sh'))
    for (const tool of ['cat', 'cp', 'chmod', 'env', 'ls', 'mkdir', 'mv', 'rm', 'ln', 'uname', 'id', 'tr', 'head', 'dirname', 'basename']) {
      const file = ['/usr/bin', '/bin'].map((d) => path.join(d, tool)).find((f) => fs.existsSync(f))
      if (file) fs.symlinkSync(file, path.join(bin, tool))
    }
  }
  const home = path.join(work, 'home-no-rust')
  fs.mkdirSync(home, { recursive: true })
  const env = cleanEnv({ PATH: bin, HOME: home })
  delete env.CARGO
  delete env.CARGO_HOME
  delete env.RUSTUP_HOME
  delete env.RUSTC
  const which = run('/bin/sh', ['-c', 'command -v cargo rustc rustup cc || true'], { env })
  expect(which.stdout.trim()).toBe('')
  return env
}

beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-pack-'))
  cargoTarget = path.join(work, 'cargo-target')
  // SLUICE_PACK_PREBUILT=1 (the release workflow, testing a binary its build job made) passes through.
  const prebuilt = process.env.SLUICE_PACK_PREBUILT === '1' ? { SLUICE_PACK_PREBUILT: '1' } : {}
  const r = npm(['pack', '--json', '--pack-destination', work], { cwd: root, env: cleanEnv(prebuilt) })
  expectOk(r, 'npm pack')
  packed = JSON.parse(r.stdout)[0]
  tarball = path.join(work, packed.filename)
  // The same package without the binary, as for a platform none is packed for.
  const unpacked = path.join(work, 'unpacked')
  fs.mkdirSync(unpacked)
  expectOk(run('tar', ['-xzf', tarball, '-C', unpacked]), 'tar -x')
  for (const f of fs.readdirSync(path.join(unpacked, 'package'))) if (f.endsWith('.node')) fs.rmSync(path.join(unpacked, 'package', f))
  sourceTarball = path.join(work, `sluice-${rootPkg.version}-source.tgz`)
  expectOk(run('tar', ['-czf', sourceTarball, '-C', unpacked, 'package']), 'tar -c')
}, 120000)

afterAll(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true })
})

test('npm pack: the tarball holds what install, build and require need, and nothing from the dev tree', () => {
  expect(packed.filename).toBe(`sluice-${rootPkg.version}.tgz`)
  expect(fs.existsSync(tarball)).toBe(true)
  const files = packed.files.map((f) => f.path).sort()

  for (const f of [
    'package.json', 'README.md', 'index.js', 'index.d.ts',
    'lib/sluice.js', 'lib/sluice.d.ts', 'lib/native.js', 'lib/ws.js', 'lib/ws.mjs', 'lib/ws.d.ts',
    'scripts/install.js', 'Cargo.toml', 'Cargo.lock', 'build.rs', 'src/lib.rs',
  ]) {
    expect(files).toContain(f)
  }
  // Every Rust source of the crate, so cargo can build it, and every file of lib/ (the layers
  // are folders under src/, the ws facade's classes under lib/ws/).
  const tree = (dir) =>
    fs.readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? tree(`${dir}/${e.name}`) : [`${dir}/${e.name}`]))
  const sources = [...tree('src'), ...tree('lib')]
  expect(sources).toContain('src/napi/mod.rs')
  expect(sources).toContain('lib/ws/websocket.js')
  for (const f of sources) expect(files).toContain(f)
  // Every file the package's "exports" map points at.
  const targets = []
  const walk = (v) => (typeof v === 'string' ? targets.push(path.posix.normalize(v)) : Object.values(v).forEach(walk))
  walk(rootPkg.exports)
  expect(targets).toContain('lib/sluice.js')
  for (const t of targets) expect(files).toContain(t)

  // Nothing from the development tree: no build output, benchmarks, tests, dev scripts, the
  // per-platform package dirs, and no .node binary (a binary from the packer's machine must not
  // ship by accident; prebuilt binaries go in the per-platform packages under npm/).
  const stray = files.filter((f) =>
    /^(target|bench|__test__|node_modules|demo|reports|npm|examples|docs|\.ci|\.git|\.github)\//.test(f) ||
    f === 'scripts/ensure-tools.sh' || f === 'scripts/prepack.js' || /\.tgz$/.test(f))
  expect(stray).toEqual([])
  // One native binary: this platform's release build (what `npm run build` put next to index.js,
  // and cargo's own output), in the layout the napi-rs loader tries first.
  const binaries = files.filter((f) => f.endsWith('.node'))
  expect(binaries).toHaveLength(1)
  if (nativeName) expect(binaries).toEqual([nativeName])
  const packedBinary = packed.files.find((f) => f.path === binaries[0])
  expect(packedBinary.size).toBe(fs.statSync(path.join(root, binaries[0])).size)
  expect(packed.size).toBeLessThan(8 << 20) // gzipped: ~2 MB with the binary

  // A plain `npm install <tarball>` needs nothing from a registry.
  expect(packed.name).toBe('sluice')
  expect(rootPkg.dependencies || {}).toEqual({})
  expect(rootPkg.scripts.install).toBe('node scripts/install.js')
})

test('without a Rust toolchain, the packed binary installs in seconds: sluice, sluice/ws, sluice/prometheus, ESM, types', () => {
  const env = noRustEnv()
  const dir = newProject('consumer-prebuilt')
  editPackageJson(dir, (pkg) => { pkg.allowScripts = { [`file:${tarball}`]: true } })
  const t0 = Date.now()
  const r = npm(['install', '--strict-allow-scripts', '--foreground-scripts', tarball], { cwd: dir, env, timeout: 120000 })
  const seconds = (Date.now() - t0) / 1000
  expectOk(r, 'npm install <tarball> without cargo')
  console.log(`npm install <tarball> with the packed binary, no cargo on PATH: ${seconds.toFixed(1)} s`)
  expect(seconds).toBeLessThan(60)
  expect(r.out).not.toContain('building the native part')
  expect(r.out).toContain('already in place') // the install script found the binary and built nothing
  const pkgDir = path.join(dir, 'node_modules', 'sluice')
  const binaries = fs.readdirSync(pkgDir).filter((f) => f.endsWith('.node'))
  expect(binaries).toHaveLength(1)
  expect(fs.readFileSync(path.join(pkgDir, binaries[0])).equals(fs.readFileSync(path.join(root, binaries[0])))).toBe(true)
  checkConsumer(dir, env)
  checkTypes(dir)

  // sluice/prometheus resolves the project's prom-client (an optional peer dependency).
  const probe = run(process.execPath, ['-e', `
    const p = require('sluice/prometheus')
    try { p.collectMetrics({ metrics() { return { cluster: null } } }) } catch (e) { console.log(e.code) }`], { cwd: dir, env })
  expectOk(probe, 'sluice/prometheus without prom-client')
  expect(probe.stdout.trim()).toBe('ERR_SLUICE_PROM_CLIENT_MISSING')

  // With install scripts skipped the binary is there all the same.
  const dir2 = newProject('consumer-prebuilt-ignore-scripts')
  expectOk(npm(['install', '--ignore-scripts', tarball], { cwd: dir2, env }), 'npm install --ignore-scripts <tarball>')
  checkConsumer(dir2, env)
}, 240000)

test('for a platform without a packed binary, with its install script allowed, it builds from source; sluice and sluice/ws work', () => {
  const tarball = sourceTarball
  const dir = newProject('consumer-built')
  // npm 11 runs a dependency's install script only if "allowScripts" allows it (today an
  // unreviewed script still runs, with a warning; --strict-allow-scripts makes that an error, so
  // this install fails if the entry did not match). A tarball dependency is matched by its
  // resolved file: spec.
  editPackageJson(dir, (pkg) => { pkg.allowScripts = { [`file:${tarball}`]: true } })

  const t0 = Date.now()
  const r = npm(['install', '--strict-allow-scripts', '--foreground-scripts', tarball], {
    cwd: dir,
    env: cleanEnv({ SLUICE_CARGO_TARGET_DIR: cargoTarget }),
    timeout: 420000,
  })
  expectOk(r, 'npm install <tarball>')
  expect(r.out).toContain('sluice: building the native part')
  console.log(`npm install <tarball> with a cold cargo build: ${((Date.now() - t0) / 1000).toFixed(1)} s`)

  const pkgDir = path.join(dir, 'node_modules', 'sluice')
  expect(fs.lstatSync(pkgDir).isDirectory()).toBe(true) // a real copy, not a link into the repo
  expect(JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).dependencies).toEqual({
    sluice: `file:${path.relative(dir, tarball)}`,
  })
  // One binary, where the loader looks first; nothing else left behind (no target/, no temp file).
  const built = fs.readdirSync(pkgDir).filter((f) => f.endsWith('.node') || f.endsWith('.tmp'))
  expect(built).toHaveLength(1)
  if (nativeName) expect(built).toEqual([nativeName])
  builtBinary = path.join(pkgDir, built[0])
  expect(fs.existsSync(path.join(pkgDir, 'target'))).toBe(false)
  expect(fs.existsSync(path.join(cargoTarget, 'release'))).toBe(true) // SLUICE_CARGO_TARGET_DIR is kept

  checkConsumer(dir)
  checkTypes(dir)

  // Run again, the install script sees a loadable binary and does not build.
  const again = run(process.execPath, [path.join(pkgDir, 'scripts', 'install.js')], {
    cwd: dir,
    env: cleanEnv({ CARGO: '/nonexistent/cargo' }),
  })
  expectOk(again, 'install.js with a binary in place')
  expect(again.stderr).toContain('already in place')
}, 480000)

test('without a packed binary, installed with install scripts skipped: require throws ERR_SLUICE_NATIVE_MISSING; the fix it names works', () => {
  const tarball = sourceTarball
  const dir = newProject('consumer-skipped')
  const r = npm(['install', '--ignore-scripts', tarball], { cwd: dir })
  expectOk(r, 'npm install --ignore-scripts <tarball>')
  const pkgDir = path.join(dir, 'node_modules', 'sluice')
  expect(fs.readdirSync(pkgDir).filter((f) => f.endsWith('.node'))).toEqual([])

  for (const spec of ['sluice', 'sluice/ws']) {
    const probe = run(process.execPath, ['-e', `
      try { require(${JSON.stringify(spec)}); console.log(JSON.stringify({ loaded: true })) }
      catch (e) { console.log(JSON.stringify({ code: e.code, platform: e.platform, message: e.message })) }`], { cwd: dir })
    expectOk(probe, `require('${spec}') probe`)
    const err = JSON.parse(probe.stdout)
    expect(err.code).toBe('ERR_SLUICE_NATIVE_MISSING')
    if (nativeName) expect(err.platform).toBe('linux-x64-gnu')
    expect(err.message).toContain(`(${err.platform})`)
    expect(err.message).toContain(`${path.join(pkgDir, `sluice.${err.platform}.node`)}: not found`)
    expect(err.message).toContain(`sluice-${err.platform}: not installed`)
    expect(err.message).toContain('npm install-scripts approve sluice && npm rebuild sluice')
    expect(err.message).toContain(`node ${JSON.stringify(path.join(pkgDir, 'scripts', 'install.js'))}`)
    expect(err.message).toContain('https://rustup.rs')
    expect(err.message).not.toContain('npm has a bug') // the generic napi-rs loader text
  }

  // The fix the message gives, as a user types it.
  const approve = npm(['install-scripts', 'approve', 'sluice'], { cwd: dir })
  expectOk(approve, 'npm install-scripts approve sluice')
  const allow = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).allowScripts
  expect(allow).toEqual({ [`file:${tarball}`]: true })
  const rebuild = npm(['rebuild', 'sluice', '--foreground-scripts'], {
    cwd: dir,
    env: cleanEnv({ SLUICE_CARGO_TARGET_DIR: cargoTarget }),
    timeout: 420000,
  })
  expectOk(rebuild, 'npm rebuild sluice')
  expect(rebuild.out).toContain('sluice: building the native part')
  checkConsumer(dir)
}, 480000)

test('without a packed binary and without a Rust toolchain the build stops with a clear message (install.js and npm install)', () => {
  const tarball = sourceTarball
  const dir = newProject('consumer-no-rust')
  expectOk(npm(['install', '--ignore-scripts', tarball], { cwd: dir }), 'npm install --ignore-scripts <tarball>')
  const pkgDir = path.join(dir, 'node_modules', 'sluice')
  const env = noRustEnv()

  const direct = run(process.execPath, [path.join(pkgDir, 'scripts', 'install.js')], { cwd: dir, env })
  expect(direct.status).toBe(1)
  expect(direct.stderr).toContain('the Rust toolchain (cargo) was not found')
  expect(direct.stderr).toContain('https://rustup.rs')
  expect(direct.stderr).toContain('SLUICE_SKIP_BUILD=1')
  if (nativeName) expect(direct.stderr).toContain('linux-x64-gnu')
  expect(fs.readdirSync(pkgDir).filter((f) => f.endsWith('.node'))).toEqual([])

  // The same through npm: the install fails and npm shows the message.
  const dir2 = newProject('consumer-no-rust-npm')
  const viaNpm = npm(['install', tarball], { cwd: dir2, env })
  expect(viaNpm.status).not.toBe(0)
  expect(viaNpm.out).toContain('the Rust toolchain (cargo) was not found')
  expect(viaNpm.out).toContain('https://rustup.rs')

  // SLUICE_SKIP_BUILD=1: installs without the native part, saying so.
  const skip = run(process.execPath, [path.join(pkgDir, 'scripts', 'install.js')], {
    cwd: dir,
    env: { ...env, SLUICE_SKIP_BUILD: '1' },
  })
  expectOk(skip, 'install.js with SLUICE_SKIP_BUILD=1')
  expect(skip.stderr).toContain('SLUICE_SKIP_BUILD=1: not building')
}, 120000)

test('install.js: the default temporary target dir is removed after a build, and after a failed one', () => {
  if (!builtBinary) throw new Error('needs the binary built by the install test above')
  const dir = newProject('consumer-fake-cargo')
  expectOk(npm(['install', '--ignore-scripts', sourceTarball], { cwd: dir }), 'npm install --ignore-scripts <tarball>')
  const pkgDir = path.join(dir, 'node_modules', 'sluice')
  const tmp = path.join(work, 'tmp-fake-cargo')
  fs.mkdirSync(tmp)
  const record = path.join(work, 'fake-cargo.json')
  // A stand-in cargo: records how it was called and "builds" by handing over the binary the
  // real cargo build above produced (or fails, when told to).
  const fakeCargo = path.join(work, 'fake-cargo')
  fs.writeFileSync(fakeCargo, `#!${process.execPath}
const fs = require('fs'), path = require('path')
const targetDir = process.env.CARGO_TARGET_DIR
fs.writeFileSync(${JSON.stringify(record)}, JSON.stringify({ args: process.argv.slice(2), targetDir }))
if (process.env.FAKE_CARGO_FAIL) { console.error('error[E0000]: fake compile error'); process.exit(101) }
fs.mkdirSync(path.join(targetDir, 'release'), { recursive: true })
fs.writeFileSync(path.join(targetDir, 'release', 'filler.rlib'), Buffer.alloc(1 << 20))
fs.copyFileSync(${JSON.stringify(builtBinary)}, path.join(targetDir, 'release', 'libsluice.so'))
`)
  fs.chmodSync(fakeCargo, 0o755)
  const env = cleanEnv({ CARGO: fakeCargo, TMPDIR: tmp })

  const failed = run(process.execPath, [path.join(pkgDir, 'scripts', 'install.js')], { cwd: dir, env: { ...env, FAKE_CARGO_FAIL: '1' } })
  expect(failed.status).toBe(1)
  expect(failed.stderr).toContain('fake compile error')
  expect(failed.stderr).toContain('cargo build failed (exit status 101)')
  let called = JSON.parse(fs.readFileSync(record, 'utf8'))
  expect(path.dirname(called.targetDir)).toBe(tmp)
  expect(fs.readdirSync(tmp)).toEqual([])
  expect(fs.readdirSync(pkgDir).filter((f) => f.endsWith('.node') || f.endsWith('.tmp'))).toEqual([])

  const ok = run(process.execPath, [path.join(pkgDir, 'scripts', 'install.js')], { cwd: dir, env })
  expectOk(ok, 'install.js with the stand-in cargo')
  called = JSON.parse(fs.readFileSync(record, 'utf8'))
  expect(called.args).toEqual(['build', '--release', '--locked', '--lib', '--manifest-path', path.join(pkgDir, 'Cargo.toml')])
  expect(path.dirname(called.targetDir)).toBe(tmp)
  expect(fs.readdirSync(tmp)).toEqual([]) // the target dir is gone
  const installed = path.join(pkgDir, path.basename(builtBinary))
  expect(fs.readFileSync(installed).equals(fs.readFileSync(builtBinary))).toBe(true)
  expect(ok.stderr).toContain(`built ${installed}`)

  // In the development checkout (this repository) the install script does nothing: `npm ci` runs
  // the root package's own install script, and developers build with `npm run build`.
  const dev = run(process.execPath, [path.join(root, 'scripts', 'install.js')], { cwd: root, env: cleanEnv({ CARGO: '/nonexistent/cargo' }) })
  expectOk(dev, 'install.js in the development checkout')
  expect(dev.stderr).toContain('development checkout')
}, 120000)
