'use strict'

/**
 * Realistic casino-lobby JSON for the `lobby-deflate` scenario (issue 16): about --payload bytes
 * (2 KiB) of tables with seats, players, bets and jackpot amounts, changing every broadcast the
 * way a live lobby does (jackpots grow, rounds advance, timers count down, players sit down, leave,
 * win and lose), so that it does not compress to nothing. Seeded: the same seed gives the same
 * sequence of messages, for every adapter alike.
 *
 * One message: `{"t":<send time, µs since the Unix epoch>,"s":<sequence number>,"lobby":{...}}`.
 * The load generator reads `t` and `s` from the first bytes of a text message (the binary
 * layout's u64 LE timestamp and sequence number, in JSON); `t` is written last, right before the
 * broadcast call, as the binary payload's timestamp is.
 *
 * Used by bench/adapters/common.js (`--payload-kind lobby-json`) and by the crate measurement
 * (node bench/adapters/lobby-payload.js --dump N FILE: N messages, each a u32 LE length + bytes).
 */

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const SYLLABLES = ['ka', 'ro', 'mi', 'zen', 'lu', 'tor', 'vex', 'al', 'dra', 'qui', 'sol', 'ny', 'bel', 'ash', 'cor', 'fi', 'gor', 'jet', 'pax', 'rex', 'sky', 'tan', 'ul', 'wyn']
const SUFFIXES = ['', '', '', '77', '_x', 'Ace', '99', 'King', '_pro', '21', 'Luck', '007']
const DEALERS = ['Anna', 'Boris', 'Chloe', 'Diego', 'Elena', 'Farid', 'Greta', 'Hiro', 'Ines', 'Jonas', 'Kira', 'Liam']
const GAMES = [
  { game: 'blackjack', seats: 7, min: 10, max: 2000, phases: ['betting', 'dealing', 'playing', 'settling'] },
  { game: 'roulette', seats: 8, min: 1, max: 5000, phases: ['betting', 'spinning', 'result'] },
  { game: 'baccarat', seats: 7, min: 25, max: 10000, phases: ['betting', 'dealing', 'result'] },
  { game: 'holdem', seats: 6, min: 2, max: 400, phases: ['preflop', 'flop', 'turn', 'river', 'showdown'] },
]
const CURRENCY = ['EUR', 'USD', 'GBP']

class LobbyPayload {
  /**
   * @param {number} targetBytes the message size to aim at (tables are added until it is reached)
   * @param {number} [seed]
   */
  constructor(targetBytes = 2048, seed = 0x5eed) {
    this.rand = prng(seed)
    this.seq = 0
    this.nextPlayer = 100000 + Math.floor(this.rand() * 800000)
    this.jackpots = {
      mini: this.cents(500, 2000),
      minor: this.cents(5000, 20000),
      major: this.cents(50000, 150000),
      grand: this.cents(500000, 2000000),
    }
    this.online = 2000 + this.int(0, 3000)
    this.tables = []
    // Add tables until a message reaches the target size (the first table at least).
    do this.tables.push(this.newTable(this.tables.length))
    while (this.body(0).length < targetBytes - 80 && this.tables.length < 64)
    if (this.body(0).length > targetBytes + 200 && this.tables.length > 1) this.tables.pop()
  }

  int(lo, hi) {
    return lo + Math.floor(this.rand() * (hi - lo + 1))
  }

  cents(lo, hi) {
    return this.int(lo * 100, hi * 100)
  }

  pick(list) {
    return list[Math.floor(this.rand() * list.length)]
  }

  nick() {
    let s = this.pick(SYLLABLES)
    const n = this.int(1, 2)
    for (let i = 0; i < n; i++) s += this.pick(SYLLABLES)
    return s[0].toUpperCase() + s.slice(1) + this.pick(SUFFIXES)
  }

  newPlayer(t) {
    return { id: 'p' + this.nextPlayer++, nick: this.nick(), chips: this.cents(t.min * 5, t.max * 3) / 100, bet: 0, streak: 0 }
  }

  newTable(i) {
    const g = GAMES[i % GAMES.length]
    const t = {
      id: `${g.game.slice(0, 2)}-${String(i + 1).padStart(2, '0')}`,
      game: g.game,
      dealer: this.pick(DEALERS),
      currency: this.pick(CURRENCY),
      min: g.min,
      max: g.max,
      phase: 0,
      round: 10000 + this.int(0, 90000),
      timer: this.int(5, 20),
      seats: [],
      last: null,
      g,
    }
    for (let s = 0; s < g.seats; s++) t.seats.push(this.rand() < 0.7 ? this.newPlayer(t) : null)
    return t
  }

  /** One lobby tick: what changes between two broadcasts. */
  step() {
    const j = this.jackpots
    j.mini += this.int(1, 90)
    j.minor += this.int(1, 400)
    j.major += this.int(10, 1500)
    j.grand += this.int(50, 6000)
    if (this.rand() < 0.01) j.mini = this.cents(500, 700) // won
    this.online += this.int(-15, 15)
    for (const t of this.tables) {
      t.timer -= 1
      if (t.timer <= 0) {
        t.phase = (t.phase + 1) % t.g.phases.length
        t.timer = this.int(3, 15)
        if (t.phase === 0) {
          t.round++
          t.last = t.game === 'roulette' ? String(this.int(0, 36)) : this.pick(['player', 'banker', 'dealer', 'push', 'split'])
        }
      }
      for (let s = 0; s < t.seats.length; s++) {
        const p = t.seats[s]
        if (p === null) {
          if (this.rand() < 0.08) t.seats[s] = this.newPlayer(t)
          continue
        }
        if (this.rand() < 0.03) {
          t.seats[s] = null
          continue
        }
        const r = this.rand()
        if (r < 0.4) p.bet = Math.min(t.max, t.min * this.int(1, 20))
        else if (r < 0.6) {
          p.chips = Math.round((p.chips + p.bet * this.pick([1, 1.5, 2])) * 100) / 100
          p.streak = p.streak >= 0 ? p.streak + 1 : 1
          p.bet = 0
        } else if (r < 0.8) {
          p.chips = Math.max(0, Math.round((p.chips - p.bet) * 100) / 100)
          p.streak = p.streak <= 0 ? p.streak - 1 : -1
          p.bet = 0
        }
      }
    }
  }

  /** The JSON after the header: `"s":<seq>,"lobby":{...}}`. */
  body(seq) {
    const lobby = {
      online: this.online,
      jackpots: {
        mini: this.jackpots.mini / 100,
        minor: this.jackpots.minor / 100,
        major: this.jackpots.major / 100,
        grand: this.jackpots.grand / 100,
      },
      tables: this.tables.map((t) => ({
        id: t.id,
        game: t.game,
        dealer: t.dealer,
        currency: t.currency,
        limits: [t.min, t.max],
        round: t.round,
        phase: t.g.phases[t.phase],
        timer: t.timer,
        last: t.last,
        players: t.seats.reduce((n, p) => n + (p ? 1 : 0), 0),
        seats: t.seats.map((p, n) => (p ? { n, id: p.id, nick: p.nick, chips: p.chips, bet: p.bet, streak: p.streak } : { n })),
      })),
    }
    return `"s":${seq},"lobby":${JSON.stringify(lobby)}}`
  }

  /**
   * The next message as a string, timestamp taken by `nowUs()` after the body was built (right
   * before the caller broadcasts it).
   */
  next(nowUs) {
    this.step()
    const body = this.body(this.seq++)
    return `{"t":${nowUs()},` + body
  }
}

module.exports = { LobbyPayload, prng }

if (require.main === module) {
  // node bench/adapters/lobby-payload.js --dump N FILE [--payload BYTES] [--seed S]
  const args = process.argv.slice(2)
  const at = (k, d) => {
    const i = args.indexOf(k)
    return i >= 0 ? args[i + 1] : d
  }
  const n = Number(at('--dump', 200))
  const file = args[args.indexOf('--dump') + 2]
  const gen = new LobbyPayload(Number(at('--payload', 2048)), Number(at('--seed', 0x5eed)))
  const parts = []
  let total = 0
  let t = 1765000000000000
  for (let i = 0; i < n; i++) {
    const m = Buffer.from(gen.next(() => (t += 500000)))
    const len = Buffer.alloc(4)
    len.writeUInt32LE(m.length)
    parts.push(len, m)
    total += m.length
  }
  if (file) require('fs').writeFileSync(file, Buffer.concat(parts))
  process.stdout.write(`${n} messages, mean ${Math.round(total / n)} bytes, ${gen.tables.length} tables\n`)
  if (!file) process.stdout.write(parts[1].toString() + '\n')
}
