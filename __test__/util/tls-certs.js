'use strict'

/**
 * Throwaway certificates for tls.test.js, made at test time with the `openssl` CLI in a fresh
 * temporary directory (removed by `cleanup()`). Nothing here is a secret: every key lives for
 * one test run.
 *
 * `makeCerts()` returns PEM Buffers:
 * - `ca1` (EC P-256 root) and, signed by it, `ec` (EC P-256 leaf) and `rsa` (RSA-2048 leaf),
 *   both for DNS:localhost and IP:127.0.0.1;
 * - `ec.encryptedKey`: the EC leaf's key as encrypted PKCS#8 (AES-256-CBC, PASSPHRASE);
 * - `ec.legacyKey`: the same key as a legacy encrypted PEM (`Proc-Type: 4,ENCRYPTED`);
 * - `ca2` and `reload` (a leaf signed by ca2), for the setSecureContext test;
 * - `strayKey`: an EC key that belongs to no certificate (the mismatch);
 * - `root3`, `inter3` (an intermediate CA signed by root3) and `chained` (a leaf signed by the
 *   intermediate): served with `ca: inter3.cert`, a client trusting root3 alone must accept it;
 * - `ec.spki`: base64 SHA-256 of the EC leaf's SubjectPublicKeyInfo, as Chromium's
 *   `--ignore-certificate-errors-spki-list` takes it.
 */

const fs = require('fs')
const os = require('os')
const path = require('path')
const { execFileSync } = require('child_process')

const PASSPHRASE = 'correct horse battery staple'

function openssl(dir, args, input) {
  return execFileSync('openssl', args, { cwd: dir, input, stdio: ['pipe', 'pipe', 'pipe'] })
}

function makeCerts() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-tls-'))
  const run = (...args) => openssl(dir, args)
  const read = (f) => fs.readFileSync(path.join(dir, f))

  const ecKey = (name) => run('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${name}.key`)
  const rootCa = (name, cn) => {
    ecKey(name)
    run('req', '-x509', '-new', '-key', `${name}.key`, '-sha256', '-days', '2', '-subj', `/CN=${cn}`, '-out', `${name}.pem`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
  }
  fs.writeFileSync(path.join(dir, 'leaf.ext'),
    'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' +
    'extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n')
  fs.writeFileSync(path.join(dir, 'inter.ext'), 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n')
  /** A certificate for `name.key`, signed by `ca`, with the extensions of `ext`. */
  const sign = (name, ca, cn, ext) => {
    run('req', '-new', '-key', `${name}.key`, '-subj', `/CN=${cn}`, '-out', `${name}.csr`)
    run('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial',
      '-sha256', '-days', '2', '-extfile', ext, '-out', `${name}.pem`)
  }

  rootCa('ca1', 'sluice test CA 1')
  ecKey('ec')
  sign('ec', 'ca1', 'localhost', 'leaf.ext')
  run('genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'rsa.key')
  sign('rsa', 'ca1', 'localhost', 'leaf.ext')
  run('pkcs8', '-topk8', '-v2', 'aes-256-cbc', '-in', 'ec.key', '-passout', `pass:${PASSPHRASE}`, '-out', 'ec.enc.key')
  run('ec', '-in', 'ec.key', '-aes256', '-passout', `pass:${PASSPHRASE}`, '-out', 'ec.legacy.key')

  rootCa('ca2', 'sluice test CA 2')
  ecKey('reload')
  sign('reload', 'ca2', 'localhost', 'leaf.ext')

  ecKey('stray')

  rootCa('root3', 'sluice test root 3')
  ecKey('inter3')
  sign('inter3', 'root3', 'sluice test intermediate 3', 'inter.ext')
  ecKey('chained')
  sign('chained', 'inter3', 'localhost', 'leaf.ext')

  const spki = execFileSync('sh', ['-c',
    'openssl x509 -in ec.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64'],
  { cwd: dir }).toString().trim()

  const pair = (name) => ({ key: read(`${name}.key`), cert: read(`${name}.pem`) })
  return {
    dir,
    PASSPHRASE,
    ca1: pair('ca1'),
    ec: { ...pair('ec'), encryptedKey: read('ec.enc.key'), legacyKey: read('ec.legacy.key'), spki },
    rsa: pair('rsa'),
    ca2: pair('ca2'),
    reload: pair('reload'),
    strayKey: read('stray.key'),
    root3: pair('root3'),
    inter3: pair('inter3'),
    chained: pair('chained'),
    cleanup() {
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}

/**
 * The bytes `tls.connect` writes first, its ClientHello (SNI `localhost`, ALPN `http/1.1`),
 * captured by a listener of its own on `host`: a real hello to replay or dribble.
 *
 * @param {string} [host] Default 127.0.0.1
 * @returns {Promise<Buffer>}
 */
function captureClientHello(host = '127.0.0.1') {
  const net = require('net')
  const tls = require('tls')
  return new Promise((resolve, reject) => {
    const sink = net.createServer((s) => {
      s.once('data', (d) => {
        resolve(d)
        s.destroy()
        sink.close()
      })
    })
    sink.listen(0, host, () => {
      const t = tls.connect({ port: sink.address().port, host, servername: 'localhost', ALPNProtocols: ['http/1.1'] })
      t.on('error', () => {})
    })
    sink.on('error', reject)
  })
}

module.exports = { makeCerts, captureClientHello, PASSPHRASE }
