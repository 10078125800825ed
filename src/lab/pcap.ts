/**
 * A reader for the pcap files tcpdump writes (Ethernet or Linux cooked captures), enough to
 * say which addresses, ports and bytes crossed a link: the lab's captures are read with it.
 */
import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { formatIP } from '../wireguard/ip.ts';
import type { Lab } from './lab.ts';

/**
 * Starts tcpdump on a link (run in the lab's router namespace) writing `file`, and resolves
 * once it is listening. --immediate-mode: without it packets wait in a ring block until it
 * fills, and a SIGINT before then loses them. Returns the process and its stderr so far.
 */
export async function startTcpdump(lab: Lab, link: string, file: string, args: readonly string[]): Promise<{ proc: ChildProcess; stderr: () => string }> {
  const proc = lab.spawn(lab.router, 'tcpdump', ['-i', link, '-n', ...args, '--immediate-mode', '-Z', 'root', '-w', file]);
  let err = '';
  proc.stdout!.resume();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tcpdump on ${link} did not start: ${err}`)), 10_000);
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (err.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`tcpdump on ${link} exited (${code}): ${err}`));
    });
  });
  return { proc, stderr: () => err };
}

export interface CapturedPacket {
  readonly family: 4 | 6;
  readonly src: string;
  readonly dst: string;
  readonly protocol: number;
  readonly srcPort: number | null;
  readonly dstPort: number | null;
  /** The transport payload (UDP) or the IP payload (other protocols). */
  readonly payload: Uint8Array;
  /** The whole IP packet. */
  readonly ip: Uint8Array;
}

export function readPcap(path: string): CapturedPacket[] {
  const b = readFileSync(path);
  if (b.length < 24) return [];
  const magic = b.readUInt32LE(0);
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  if (!le && b.readUInt32BE(0) !== 0xa1b2c3d4 && b.readUInt32BE(0) !== 0xa1b23c4d) throw new Error(`${path} is not a pcap file`);
  const u32 = (o: number): number => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const linktype = u32(20);
  const out: CapturedPacket[] = [];
  for (let o = 24; o + 16 <= b.length; ) {
    const incl = u32(o + 8);
    const frame = b.subarray(o + 16, o + 16 + incl);
    o += 16 + incl;
    let off: number;
    let ethertype: number;
    if (linktype === 1) {
      if (frame.length < 14) continue;
      ethertype = frame.readUInt16BE(12);
      off = 14;
      if (ethertype === 0x8100 && frame.length >= 18) {
        ethertype = frame.readUInt16BE(16);
        off = 18;
      }
    } else if (linktype === 113) {
      if (frame.length < 16) continue;
      ethertype = frame.readUInt16BE(14);
      off = 16;
    } else if (linktype === 101 || linktype === 12) {
      ethertype = frame.length > 0 && frame[0]! >> 4 === 6 ? 0x86dd : 0x0800;
      off = 0;
    } else continue;
    const p = parseIp(new Uint8Array(frame.buffer, frame.byteOffset + off, frame.length - off), ethertype);
    if (p !== null) out.push(p);
  }
  return out;
}

function parseIp(ip: Uint8Array, ethertype: number): CapturedPacket | null {
  let family: 4 | 6;
  let protocol: number;
  let l4: number;
  let src: Uint8Array;
  let dst: Uint8Array;
  if (ethertype === 0x0800 && ip.length >= 20 && ip[0]! >> 4 === 4) {
    family = 4;
    protocol = ip[9]!;
    l4 = (ip[0]! & 15) * 4;
    src = ip.subarray(12, 16);
    dst = ip.subarray(16, 20);
  } else if (ethertype === 0x86dd && ip.length >= 40 && ip[0]! >> 4 === 6) {
    family = 6;
    protocol = ip[6]!;
    l4 = 40;
    src = ip.subarray(8, 24);
    dst = ip.subarray(24, 40);
  } else return null;
  let srcPort: number | null = null;
  let dstPort: number | null = null;
  let payload = ip.subarray(l4);
  if ((protocol === 17 || protocol === 6) && ip.length >= l4 + 8) {
    srcPort = (ip[l4]! << 8) | ip[l4 + 1]!;
    dstPort = (ip[l4 + 2]! << 8) | ip[l4 + 3]!;
    if (protocol === 17) payload = ip.subarray(l4 + 8);
  }
  return { family, src: formatIP(src), dst: formatIP(dst), protocol, srcPort, dstPort, payload, ip };
}

/** How many frames (of any kind: IP, ARP, …) a pcap file holds. */
export function countPcapFrames(path: string): number {
  const b = readFileSync(path);
  if (b.length < 24) return 0;
  const le = b.readUInt32LE(0) === 0xa1b2c3d4 || b.readUInt32LE(0) === 0xa1b23c4d;
  let n = 0;
  for (let o = 24; o + 16 <= b.length; n++) o += 16 + (le ? b.readUInt32LE(o + 8) : b.readUInt32BE(o + 8));
  return n;
}
