/**
 * The relay's logger, an allow-list: an event is one of a fixed set of names, and its fields
 * are from a fixed set of aggregate counts, each a number. There is no way to log an address,
 * a port, a key, a receiver index or a per-client counter: the types forbid it and the
 * function drops anything else at run time too.
 */
export const RELAY_EVENTS = [
  'relay-started',
  'relay-stopped',
  'directory-refreshed',
  'directory-refresh-failed',
  'client-admitted',
  'client-refused',
  'client-expired',
  'forward-refused',
  'exit-ready',
] as const;
export type RelayEvent = (typeof RELAY_EVENTS)[number];

export const RELAY_FIELDS = ['clients', 'admitted', 'refused', 'relays', 'serial', 'forwarded', 'exitPackets'] as const;
export type RelayField = (typeof RELAY_FIELDS)[number];

const events = new Set<string>(RELAY_EVENTS);
const fields = new Set<string>(RELAY_FIELDS);

export type RelayLogger = (event: RelayEvent, data?: Partial<Record<RelayField, number>>) => void;

/** A logger writing one JSON line per event to `write` (stderr by default). */
export function relayLogger(write: (line: string) => void = (l) => process.stderr.write(l)): RelayLogger {
  return (event, data = {}) => {
    if (!events.has(event)) return;
    const entry: Record<string, string | number> = { t: new Date().toISOString(), event };
    for (const [k, v] of Object.entries(data)) {
      if (fields.has(k) && typeof v === 'number' && Number.isFinite(v)) entry[k] = v;
    }
    write(JSON.stringify(entry) + '\n');
  };
}
