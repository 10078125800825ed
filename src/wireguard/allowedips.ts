/**
 * AllowedIPs: a longest-prefix-match binary trie per address family, mapping prefixes to
 * peers. It routes outbound packets (destination to peer) and checks inbound ones (the source
 * must map back to the peer that sent them). Inserting a prefix another peer holds moves it.
 */
import { formatPrefix, maskTo, parsePrefix, type IpBytes, type Prefix } from './ip.ts';

interface Node<P> {
  zero: Node<P> | null;
  one: Node<P> | null;
  owner: P | null;
}

function node<P>(): Node<P> {
  return { zero: null, one: null, owner: null };
}

function bitAt(addr: Uint8Array, offset: number, i: number): number {
  return (addr[offset + (i >> 3)]! >> (7 - (i & 7))) & 1;
}

export class AllowedIPs<P> {
  readonly #v4 = node<P>();
  readonly #v6 = node<P>();

  #root(len: number): Node<P> {
    return len === 4 ? this.#v4 : this.#v6;
  }

  insert(prefix: Prefix, owner: P): void {
    let n = this.#root(prefix.address.length);
    for (let i = 0; i < prefix.bits; i++) {
      if (bitAt(prefix.address, 0, i) === 0) n = n.zero ??= node();
      else n = n.one ??= node();
    }
    n.owner = owner;
  }

  /** Inserts a textual prefix; returns false if it does not parse. */
  insertText(text: string, owner: P): boolean {
    const p = parsePrefix(text);
    if (p === null) return false;
    this.insert(p, owner);
    return true;
  }

  /** Removes one prefix if `owner` holds it. */
  remove(prefix: Prefix, owner: P): boolean {
    let n: Node<P> | null = this.#root(prefix.address.length);
    for (let i = 0; i < prefix.bits && n !== null; i++) n = bitAt(prefix.address, 0, i) === 0 ? n.zero : n.one;
    if (n === null || n.owner !== owner) return false;
    n.owner = null;
    return true;
  }

  removeOwner(owner: P): void {
    const walk = (n: Node<P> | null): void => {
      if (n === null) return;
      if (n.owner === owner) n.owner = null;
      walk(n.zero);
      walk(n.one);
    };
    walk(this.#v4);
    walk(this.#v6);
  }

  /** Longest-prefix match of an address held at `bytes[offset..offset+len]` (len 4 or 16). */
  lookup(bytes: Uint8Array, offset = 0, len: 4 | 16 = bytes.length === 16 ? 16 : 4): P | null {
    let n: Node<P> | null = this.#root(len);
    let best: P | null = n.owner;
    const total = len * 8;
    for (let i = 0; i < total; i++) {
      n = bitAt(bytes, offset, i) === 0 ? n.zero : n.one;
      if (n === null) break;
      if (n.owner !== null) best = n.owner;
    }
    return best;
  }

  /** The prefixes `owner` holds, IPv4 first, each in ascending order. */
  prefixesOf(owner: P): Prefix[] {
    const out: Prefix[] = [];
    const walk = (n: Node<P> | null, path: Uint8Array, depth: number): void => {
      if (n === null) return;
      if (n.owner === owner) out.push({ address: maskTo(path, depth), bits: depth });
      if (n.zero !== null) walk(n.zero, path, depth + 1);
      if (n.one !== null) {
        const p = Uint8Array.from(path);
        p[depth >> 3]! |= 0x80 >> (depth & 7);
        walk(n.one, p, depth + 1);
      }
    };
    walk(this.#v4, new Uint8Array(4), 0);
    walk(this.#v6, new Uint8Array(16), 0);
    return out;
  }

  describe(owner: P): string[] {
    return this.prefixesOf(owner).map(formatPrefix);
  }
}

export type { IpBytes };
