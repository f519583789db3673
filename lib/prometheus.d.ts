// sluice/prometheus: a prom-client collector for a sluice Server. See lib/prometheus.js and the
// README's Metrics section for the metric names.
import type { Server } from './sluice'

/** What `collectMetrics` needs of a prom-client `Registry` (prom-client 14 and later have it). */
export interface RegistryLike {
  registerMetric(metric: unknown): void
  removeSingleMetric(name: string): void
  getSingleMetric(name: string): unknown
}

export interface CollectMetricsOptions {
  /** The registry to register into; default: prom-client's global `register`. */
  register?: RegistryLike
  /** Prefix of every metric name; default `'sluice_'`. */
  prefix?: string
  /**
   * Constant labels added to every sample (e.g. `{ server: 'lobby' }`). Two servers in one
   * registry need different prefixes: prom-client keys metrics by name.
   */
  labels?: Record<string, string>
}

export interface Collected {
  /** The metric names registered, e.g. `sluice_connections`, `sluice_messages_dropped_total`. */
  readonly names: string[]
  /** Unregisters them again. */
  remove(): void
}

/**
 * Registers sluice's metrics for `server` (or a `sluice/ws` `WebSocketServer`) into a prom-client
 * registry. Values are read from `server.metrics()` at scrape time, one snapshot per scrape.
 */
export function collectMetrics(server: Server | { sluice: Server }, options?: CollectMetricsOptions): Collected
