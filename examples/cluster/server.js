'use strict'

// One sluice listener per core on the same port (reusePort), linked through Redis: a broadcast
// made in any worker reaches the clients of every worker.
//
//   redis-server --save '' --appendonly no &
//   node examples/cluster/server.js          # PORT (8080) and REDIS_URL (redis://127.0.0.1:6379)

const cluster = require('node:cluster')
const os = require('node:os')
const { Server, Priority } = require('sluice')

const PORT = Number(process.env.PORT) || 8080
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379'

if (cluster.isPrimary) {
  // Exactly one worker publishes the lobby; if it dies, its replacement takes the role over.
  const fork = (role) => {
    cluster.fork({ LOBBY_ROLE: role }).role = role
  }
  const n = os.availableParallelism()
  for (let i = 0; i < n; i++) fork(i === 0 ? 'publisher' : 'replica')
  console.log(`primary ${process.pid}: ${n} workers on port ${PORT}, Redis at ${REDIS_URL}`)

  let stopping = false
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return
    console.log(`worker ${worker.process.pid} (${worker.role}) died (${signal || code}); starting another`)
    setTimeout(() => {
      if (!stopping) fork(worker.role)
    }, 1000)
  })
  const stop = () => {
    if (stopping) return
    stopping = true
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM')
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop) // Ctrl-C also reaches the workers, which close by themselves
} else {
  // One process per core: one sluice thread each (the default is one per core, per process).
  const server = new Server({ port: PORT, reusePort: true, threads: 1, cluster: { redis: REDIS_URL } })
  server.on('error', (err) => console.error(`worker ${process.pid}:`, err))
  const timers = []

  server.listen().then(() => {
    console.log(`worker ${process.pid} (${process.env.LOBBY_ROLE}) listening on ${PORT}`)
    if (process.env.LOBBY_ROLE === 'publisher') {
      let seq = 0
      // Every 500 ms the lobby state, to every client of every worker (Normal: a slow client may
      // skip a state, the next one replaces it).
      timers.push(setInterval(() => {
        seq++
        const tables = [1, 2, 3].map((id) => ({ id, seats: 6, taken: (seq + id) % 7 }))
        server.broadcast(JSON.stringify({ type: 'lobby', seq, tables }))
      }, 500))
      // Now and then a jackpot: Critical, never dropped, held while Redis is away.
      timers.push(setInterval(() => {
        if (Math.random() < 0.2) server.broadcast(JSON.stringify({ type: 'jackpot', amount: 1000 + Math.floor(Math.random() * 9000) }), Priority.Critical)
      }, 1000))
    }
    timers.push(setInterval(() => {
      console.log(`worker ${process.pid}: ${server.connectionCount} clients, cluster ${JSON.stringify(server.metrics().cluster)}`)
    }, 5000))
  }, (err) => {
    console.error(`worker ${process.pid}: cannot listen on ${PORT}:`, err.message)
    process.exit(1)
  })

  let closing = false
  const shutdown = () => {
    if (closing) return
    closing = true
    for (const t of timers) clearInterval(t)
    server.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.on('SIGTERM', shutdown)
  process.on('SIGINT', shutdown)
}
