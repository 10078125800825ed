/**
 * AllowedIPs (longest-prefix match per family, moving prefixes between owners) and the address
 * parsing and formatting under it (ip.ts).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AllowedIPs } from '../src/wireguard/allowedips.ts';
import { formatIP, formatPrefix, maskTo, parseIP, parseIPv4, parseIPv6, parsePrefix, type Prefix } from '../src/wireguard/ip.ts';

// ---- helpers -------------------------------------------------------------------------------

function ip(text: string): Uint8Array {
  const b = parseIP(text);
  if (b === null) throw new Error(`test address does not parse: ${text}`);
  return b;
}

function prefix(text: string): Prefix {
  const p = parsePrefix(text);
  if (p === null) throw new Error(`test prefix does not parse: ${text}`);
  return p;
}

/** A named owner, so failures print something readable. */
interface Owner {
  readonly name: string;
}
const owner = (name: string): Owner => ({ name });

function who(t: AllowedIPs<Owner>, address: string): string | null {
  return t.lookup(ip(address))?.name ?? null;
}

/** mulberry32, seeded. */
function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

// ---- AllowedIPs ----------------------------------------------------------------------------

describe('AllowedIPs: longest-prefix match', () => {
  test('IPv4: overlapping prefixes with different owners, the longest wins', () => {
    const t = new AllowedIPs<Owner>();
    const [x, y, z, d] = [owner('x'), owner('y'), owner('z'), owner('d')];
    t.insert(prefix('10.0.0.0/8'), x);
    t.insert(prefix('10.1.0.0/16'), y);
    t.insert(prefix('10.1.2.0/24'), x);
    t.insert(prefix('10.1.2.3/32'), z);
    assert.equal(who(t, '10.200.0.1'), 'x');
    assert.equal(who(t, '10.1.0.1'), 'y');
    assert.equal(who(t, '10.1.255.255'), 'y');
    assert.equal(who(t, '10.1.2.0'), 'x');
    assert.equal(who(t, '10.1.2.2'), 'x');
    assert.equal(who(t, '10.1.2.3'), 'z');
    assert.equal(who(t, '10.1.2.4'), 'x');
    assert.equal(who(t, '11.0.0.0'), null);
    assert.equal(who(t, '9.255.255.255'), null);
    assert.equal(who(t, '0.0.0.0'), null);
    // a default route catches the rest, and only the rest
    t.insert(prefix('0.0.0.0/0'), d);
    assert.equal(who(t, '11.0.0.0'), 'd');
    assert.equal(who(t, '255.255.255.255'), 'd');
    assert.equal(who(t, '0.0.0.0'), 'd');
    assert.equal(who(t, '10.1.2.3'), 'z');
    assert.equal(who(t, '10.1.0.1'), 'y');
    // families are separate: the IPv4 default route does not match IPv6
    assert.equal(who(t, '::'), null);
    assert.equal(who(t, '::ffff:10.1.2.3'), null);
    assert.equal(who(t, '::a01:203'), null);
  });

  test('IPv6: /0, /32, /48, /64, /127 and /128', () => {
    const t = new AllowedIPs<Owner>();
    const [a, b, c, d, e, f] = ['a', 'b', 'c', 'd', 'e', 'f'].map(owner) as [Owner, Owner, Owner, Owner, Owner, Owner];
    t.insert(prefix('2001:db8::/32'), a);
    t.insert(prefix('2001:db8:1::/48'), b);
    t.insert(prefix('2001:db8:1:2::/64'), c);
    t.insert(prefix('2001:db8:1:2::1/128'), d);
    t.insert(prefix('2001:db8:1:2::2/127'), e);
    assert.equal(who(t, '2001:db8:ffff::1'), 'a');
    assert.equal(who(t, '2001:db8:1:ffff::1'), 'b');
    assert.equal(who(t, '2001:db8:1:2::'), 'c');
    assert.equal(who(t, '2001:db8:1:2::1'), 'd');
    assert.equal(who(t, '2001:db8:1:2::2'), 'e');
    assert.equal(who(t, '2001:db8:1:2::3'), 'e');
    assert.equal(who(t, '2001:db8:1:2::4'), 'c');
    assert.equal(who(t, '2001:db8:1:2:ffff:ffff:ffff:ffff'), 'c');
    assert.equal(who(t, '2001:db9::'), null);
    assert.equal(who(t, '2001:db7:ffff:ffff:ffff:ffff:ffff:ffff'), null);
    assert.equal(who(t, '10.0.0.1'), null);
    t.insert(prefix('::/0'), f);
    assert.equal(who(t, '2001:db9::'), 'f');
    assert.equal(who(t, '::'), 'f');
    assert.equal(who(t, 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'), 'f');
    assert.equal(who(t, '2001:db8:1:2::1'), 'd');
    assert.equal(who(t, '10.0.0.1'), null, 'the IPv6 default route does not match IPv4');
  });

  test('/32 and /128 match exactly one address', () => {
    const t = new AllowedIPs<Owner>();
    const h = owner('host');
    t.insert(prefix('192.0.2.1/32'), h);
    t.insert(prefix('2001:db8::1/128'), h);
    assert.equal(who(t, '192.0.2.1'), 'host');
    for (const other of ['192.0.2.0', '192.0.2.2', '192.0.2.129', '64.0.2.1', '193.0.2.1']) assert.equal(who(t, other), null, other);
    assert.equal(who(t, '2001:db8::1'), 'host');
    for (const other of ['2001:db8::', '2001:db8::3', '2001:db8::8001', '2001:db8:8000::1', '::1']) assert.equal(who(t, other), null, other);
  });

  test('lookup reads the address at an offset inside a packet', () => {
    const t = new AllowedIPs<Owner>();
    t.insert(prefix('10.0.0.0/24'), owner('v4'));
    t.insert(prefix('fd00::/64'), owner('v6'));
    const p4 = new Uint8Array(20);
    p4.set(ip('10.9.9.9'), 12); // source
    p4.set(ip('10.0.0.7'), 16); // destination
    assert.equal(t.lookup(p4, 16, 4)?.name, 'v4');
    assert.equal(t.lookup(p4, 12, 4), null);
    const p6 = new Uint8Array(40);
    p6.set(ip('fd01::1'), 8);
    p6.set(ip('fd00::1234'), 24);
    assert.equal(t.lookup(p6, 24, 16)?.name, 'v6');
    assert.equal(t.lookup(p6, 8, 16), null);
  });

  test('host bits are masked on insert, from text and from a raw prefix', () => {
    const t = new AllowedIPs<Owner>();
    const x = owner('x');
    assert.equal(t.insertText('10.1.2.3/8', x), true);
    assert.equal(t.insertText('2001:db8:1:2:3:4:5:6/33', x), true);
    t.insert({ address: ip('192.168.1.77'), bits: 24 }, x); // not masked by the caller
    t.insert({ address: ip('172.31.255.255'), bits: 12 }, x);
    assert.deepEqual(t.describe(x), ['10.0.0.0/8', '172.16.0.0/12', '192.168.1.0/24', '2001:db8::/33']);
    assert.equal(who(t, '10.200.0.1'), 'x');
    assert.equal(who(t, '192.168.1.1'), 'x');
    assert.equal(who(t, '192.168.2.1'), null);
    assert.equal(who(t, '172.16.0.0'), 'x');
    assert.equal(who(t, '172.32.0.0'), null);
    assert.equal(who(t, '2001:db8:7fff::1'), 'x');
    assert.equal(who(t, '2001:db8:8000::1'), null);
    // and removal works from any address inside the prefix, as insert did
    assert.equal(t.remove({ address: ip('192.168.1.200'), bits: 24 }, x), true);
    assert.equal(who(t, '192.168.1.1'), null);
  });

  test('insertText refuses what does not parse and changes nothing', () => {
    const t = new AllowedIPs<Owner>();
    const x = owner('x');
    for (const bad of ['10.0.0.0/33', '::/129', 'foo', '10.0.0.0/', '10.0.0.0/-1', '10.0.0.0/08', '1.2.3/8', '/8', '10.0.0.0/8/8', '']) {
      assert.equal(t.insertText(bad, x), false, bad);
    }
    assert.deepEqual(t.prefixesOf(x), []);
    assert.equal(who(t, '10.0.0.1'), null);
  });

  test('remove takes one prefix only from its owner; shorter prefixes take over', () => {
    const t = new AllowedIPs<Owner>();
    const [x, y] = [owner('x'), owner('y')];
    t.insert(prefix('10.0.0.0/8'), x);
    t.insert(prefix('10.1.0.0/16'), y);
    t.insert(prefix('10.1.2.0/24'), y);
    t.insert(prefix('fd00::/8'), y);
    assert.equal(t.remove(prefix('10.1.0.0/16'), x), false, 'not the owner');
    assert.equal(who(t, '10.1.0.1'), 'y');
    assert.equal(t.remove(prefix('10.1.0.0/17'), y), false, 'not inserted (a node on the path)');
    assert.equal(t.remove(prefix('10.1.2.3/32'), y), false, 'not inserted (below a prefix)');
    assert.equal(t.remove(prefix('11.0.0.0/8'), y), false, 'not inserted (no node)');
    assert.equal(t.remove(prefix('fd00::/8'), x), false);
    assert.equal(t.remove(prefix('10.1.0.0/16'), y), true);
    assert.equal(who(t, '10.1.0.1'), 'x');
    assert.equal(who(t, '10.1.2.1'), 'y', 'the longer prefix under it stays');
    assert.equal(t.remove(prefix('10.1.0.0/16'), y), false, 'already removed');
    assert.deepEqual(t.describe(y), ['10.1.2.0/24', 'fd00::/8']);
    assert.equal(t.remove(prefix('fd00::/8'), y), true);
    assert.equal(who(t, 'fd00::1'), null);
    // the root itself: /0
    t.insert(prefix('0.0.0.0/0'), y);
    assert.equal(who(t, '11.0.0.0'), 'y');
    assert.equal(t.remove(prefix('0.0.0.0/0'), x), false);
    assert.equal(t.remove(prefix('0.0.0.0/0'), y), true);
    assert.equal(who(t, '11.0.0.0'), null);
    assert.equal(who(t, '10.1.0.1'), 'x');
  });

  test('removeOwner removes every prefix of one owner in both families, and only those', () => {
    const t = new AllowedIPs<Owner>();
    const [x, y] = [owner('x'), owner('y')];
    for (const p of ['0.0.0.0/0', '10.0.0.0/8', '10.1.2.3/32', '::/0', 'fd00::/64', 'fd00::1/128']) t.insertText(p, x);
    for (const p of ['10.1.0.0/16', '192.168.0.0/16', 'fd00::/16']) t.insertText(p, y);
    t.removeOwner(x);
    assert.deepEqual(t.prefixesOf(x), []);
    assert.deepEqual(t.describe(y), ['10.1.0.0/16', '192.168.0.0/16', 'fd00::/16']);
    assert.equal(who(t, '10.1.2.3'), 'y');
    assert.equal(who(t, '10.2.0.0'), null);
    assert.equal(who(t, '8.8.8.8'), null);
    assert.equal(who(t, 'fd00::1'), 'y');
    assert.equal(who(t, '2001:db8::1'), null);
    t.removeOwner(y);
    assert.deepEqual(t.prefixesOf(y), []);
    assert.equal(who(t, '10.1.2.3'), null);
    t.removeOwner(y); // no-op
    assert.deepEqual(t.prefixesOf(y), []);
  });

  test('prefixesOf lists one owner\'s prefixes, IPv4 first, each family in ascending order', () => {
    const t = new AllowedIPs<Owner>();
    const [x, y] = [owner('x'), owner('y')];
    for (const p of ['fd00::/8', '10.1.0.0/16', '::/0', '192.0.2.0/24', '10.0.0.0/8', '2001:db8::1/128', '0.0.0.0/0', '10.0.0.0/24', '::1/128', '255.255.255.255/32']) {
      t.insertText(p, x);
    }
    t.insertText('10.2.0.0/16', y);
    t.insertText('2001:db8::/32', y);
    assert.deepEqual(t.describe(x), [
      '0.0.0.0/0',
      '10.0.0.0/8',
      '10.0.0.0/24',
      '10.1.0.0/16',
      '192.0.2.0/24',
      '255.255.255.255/32',
      '::/0',
      '::1/128',
      '2001:db8::1/128',
      'fd00::/8',
    ]);
    const list = t.prefixesOf(x);
    assert.equal(list.length, 10);
    assert.deepEqual(list[1], { address: Uint8Array.of(10, 0, 0, 0), bits: 8 });
    assert.deepEqual(list[8], { address: ip('2001:db8::1'), bits: 128 });
    assert.deepEqual(t.describe(y), ['10.2.0.0/16', '2001:db8::/32']);
    assert.deepEqual(t.prefixesOf(owner('x')), [], 'owners are compared by identity');
  });

  test('re-inserting a prefix moves it to the new owner', () => {
    const t = new AllowedIPs<Owner>();
    const [x, y] = [owner('x'), owner('y')];
    t.insertText('10.0.0.0/24', x);
    t.insertText('10.0.0.0/16', x);
    t.insertText('fd00::/64', x);
    t.insertText('10.0.0.9/24', y); // same prefix once masked
    t.insertText('fd00::/64', y);
    assert.equal(who(t, '10.0.0.1'), 'y');
    assert.equal(who(t, '10.0.1.1'), 'x');
    assert.equal(who(t, 'fd00::5'), 'y');
    assert.deepEqual(t.describe(x), ['10.0.0.0/16']);
    assert.deepEqual(t.describe(y), ['10.0.0.0/24', 'fd00::/64']);
    assert.equal(t.remove(prefix('10.0.0.0/24'), x), false, 'the old owner no longer holds it');
    // and back again
    t.insertText('10.0.0.0/24', x);
    assert.equal(who(t, '10.0.0.1'), 'x');
    assert.deepEqual(t.describe(y), ['fd00::/64']);
  });

  test('randomized: agrees with a naive linear longest-prefix matcher (seeded)', () => {
    const SEED = 0x1ab5eed;
    const rand = mulberry32(SEED);
    const int = (n: number): number => Math.floor((rand() / 0x1_0000_0000) * n);
    const owners = Array.from({ length: 6 }, (_, i) => owner(`o${i}`));

    // A small pool of bases, so that prefixes nest and overlap a lot.
    const bases4 = Array.from({ length: 6 }, () => Uint8Array.from({ length: 4 }, () => int(256)));
    const bases6 = Array.from({ length: 6 }, () => Uint8Array.from({ length: 16 }, () => int(256)));
    const randomAddress = (len: 4 | 16): Uint8Array => {
      const base = len === 4 ? bases4[int(bases4.length)]! : bases6[int(bases6.length)]!;
      const a = Uint8Array.from(base);
      // keep a random number of leading bits of the base, randomize the rest
      const keep = int(len * 8 + 1);
      for (let i = keep; i < len * 8; i++) {
        if (int(2) === 1) a[i >> 3]! ^= 0x80 >> (i & 7);
      }
      return a;
    };
    const randomPrefix = (): Prefix => {
      const len = int(2) === 0 ? 4 : 16;
      const max = len * 8;
      const r = int(10);
      const bits = r === 0 ? 0 : r === 1 ? max : int(max + 1);
      return { address: randomAddress(len), bits }; // host bits left set on purpose
    };

    const naive = new Map<string, { address: Uint8Array; bits: number; owner: Owner }>();
    const key = (p: Prefix): string => `${p.address.length}:${Buffer.from(maskTo(p.address, p.bits)).toString('hex')}/${p.bits}`;
    const matches = (p: { address: Uint8Array; bits: number }, a: Uint8Array): boolean => {
      if (p.address.length !== a.length) return false;
      for (let i = 0; i < p.bits; i++) {
        const m = 0x80 >> (i & 7);
        if ((p.address[i >> 3]! & m) !== (a[i >> 3]! & m)) return false;
      }
      return true;
    };
    const naiveLookup = (a: Uint8Array): Owner | null => {
      let best: { bits: number; owner: Owner } | null = null;
      for (const e of naive.values()) if (matches(e, a) && (best === null || e.bits > best.bits)) best = e;
      return best?.owner ?? null;
    };

    const t = new AllowedIPs<Owner>();
    let inserts = 0;
    let removes = 0;
    let lookups = 0;
    let hits = 0;
    const checkSome = (n: number): void => {
      for (let k = 0; k < n; k++) {
        const a = randomAddress(int(2) === 0 ? 4 : 16);
        const expected = naiveLookup(a);
        assert.equal(t.lookup(a), expected, `seed ${SEED}: lookup ${formatIP(a)}`);
        lookups++;
        if (expected !== null) hits++;
      }
    };
    for (let round = 0; round < 3000; round++) {
      const op = int(10);
      if (op < 7) {
        const p = randomPrefix();
        const o = owners[int(owners.length)]!;
        t.insert(p, o);
        naive.set(key(p), { address: maskTo(p.address, p.bits), bits: p.bits, owner: o });
        inserts++;
      } else if (op < 9 && naive.size > 0) {
        // remove an existing prefix, from its owner or (failing) from another
        const entries = [...naive.entries()];
        const [k, e] = entries[int(entries.length)]!;
        const who = int(3) === 0 ? owners[int(owners.length)]! : e.owner;
        const removed = t.remove({ address: e.address, bits: e.bits }, who);
        assert.equal(removed, who === e.owner, `seed ${SEED}: remove ${k}`);
        if (removed) {
          naive.delete(k);
          removes++;
        }
      } else {
        // remove a prefix that is probably not there
        const p = randomPrefix();
        const o = owners[int(owners.length)]!;
        const e = naive.get(key(p));
        assert.equal(t.remove(p, o), e !== undefined && e.owner === o, `seed ${SEED}: remove ${key(p)}`);
        if (e !== undefined && e.owner === o) {
          naive.delete(key(p));
          removes++;
        }
      }
      if (round % 10 === 0) checkSome(20);
    }
    // drop one owner entirely, then check everything again
    const gone = owners[0]!;
    t.removeOwner(gone);
    for (const [k, e] of naive) if (e.owner === gone) naive.delete(k);
    checkSome(3000);

    // every owner's list matches the model: IPv4 first, then ascending address, then length
    for (const o of owners) {
      const expected = [...naive.values()]
        .filter((e) => e.owner === o)
        .sort((p, q) => p.address.length - q.address.length || Buffer.compare(p.address, q.address) || p.bits - q.bits)
        .map((e) => formatPrefix(e));
      assert.deepEqual(t.describe(o), expected, `seed ${SEED}: prefixes of ${o.name}`);
    }
    assert.ok(inserts > 1800 && removes > 300, `inserts ${inserts}, removes ${removes}`);
    assert.ok(lookups >= 9000 && hits > lookups / 3, `lookups ${lookups}, hits ${hits}`);
    assert.ok(naive.size > 500, `only ${naive.size} prefixes left`);
  });
});

// ---- ip.ts ---------------------------------------------------------------------------------

describe('ip.ts: parsing and RFC 5952 formatting', () => {
  test('IPv4 parses to bytes and formats back', () => {
    const cases: [string, number[]][] = [
      ['0.0.0.0', [0, 0, 0, 0]],
      ['255.255.255.255', [255, 255, 255, 255]],
      ['192.0.2.1', [192, 0, 2, 1]],
      ['10.0.100.9', [10, 0, 100, 9]],
    ];
    for (const [text, bytes] of cases) {
      assert.deepEqual(parseIPv4(text), Uint8Array.from(bytes), text);
      assert.deepEqual(parseIP(text), Uint8Array.from(bytes), text);
      assert.equal(formatIP(Uint8Array.from(bytes)), text);
    }
  });

  test('IPv4 rejects short, long, out-of-range, leading-zero and non-decimal forms', () => {
    for (const bad of [
      '1.2.3',
      '1.2.3.256',
      '01.2.3.4',
      '1.2.3.04',
      '1.2.3.4.5',
      '1..2.3',
      '',
      '1.2.3.-1',
      '1.2.3.+1',
      ' 1.2.3.4',
      '1.2.3.4 ',
      '0x1.2.3.4',
      '1.2.3.4/24',
      '1.2.3.1e2',
      '256.0.0.0',
      '1.2.3.0000',
      '１.2.3.4',
    ]) {
      assert.equal(parseIPv4(bad), null, JSON.stringify(bad));
      assert.equal(parseIP(bad), null, JSON.stringify(bad));
    }
  });

  test('IPv6 parses the compressed, zoned, mixed and full forms', () => {
    const zero = new Uint8Array(16);
    const one = new Uint8Array(16);
    one[15] = 1;
    const oneColon = new Uint8Array(16);
    oneColon[1] = 1;
    const mapped = new Uint8Array(16);
    mapped.set([0xff, 0xff, 1, 2, 3, 4], 10);
    const fe80 = new Uint8Array(16);
    fe80[0] = 0xfe;
    fe80[1] = 0x80;
    fe80[15] = 1;
    const cases: [string, Uint8Array, string][] = [
      ['::', zero, '::'],
      ['::1', one, '::1'],
      ['1::', oneColon, '1::'],
      ['fe80::1%eth0', fe80, 'fe80::1'],
      ['FE80::1%25', fe80, 'fe80::1'],
      ['0:0:0:0:0:0:0:0', zero, '::'],
      ['0000:0000:0000:0000:0000:0000:0000:0001', one, '::1'],
      ['1:0:0:0:0:0:0:0', oneColon, '1::'],
      ['2001:db8::1', ip('2001:db8:0:0:0:0:0:1'), '2001:db8::1'],
      ['1:2:3:4:5:6:7:8', Uint8Array.from([0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]), '1:2:3:4:5:6:7:8'],
      ['1:2:3:4:5:6:7::', Uint8Array.from([0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 0]), '1:2:3:4:5:6:7:0'],
      ['::2:3:4:5:6:7:8', Uint8Array.from([0, 0, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]), '0:2:3:4:5:6:7:8'],
    ];
    for (const [text, bytes, formatted] of cases) {
      assert.deepEqual(parseIPv6(text), bytes, text);
      assert.deepEqual(parseIP(text), bytes, text);
      assert.equal(formatIP(bytes), formatted, text);
      assert.deepEqual(parseIPv6(formatIP(bytes)), bytes, `${text}: round trip`);
    }
    // IPv4-mapped and IPv4-embedded forms: the dotted quad is the last 32 bits
    assert.deepEqual(parseIPv6('::ffff:1.2.3.4'), mapped);
    assert.deepEqual(parseIPv6('::FFFF:1.2.3.4'), mapped);
    assert.deepEqual(parseIPv6('0:0:0:0:0:ffff:1.2.3.4'), mapped);
    assert.deepEqual(parseIPv6(formatIP(mapped)), mapped, '::ffff:1.2.3.4: round trip');
    assert.equal(formatIP(mapped), '::ffff:1.2.3.4', 'mapped addresses print dotted, as wg does');
    assert.deepEqual(parseIPv6('64:ff9b::192.0.2.33'), ip('64:ff9b::c000:221'));
    assert.deepEqual(parseIPv6('1:2:3:4:5:6:1.2.3.4'), ip('1:2:3:4:5:6:102:304'));
  });

  test('IPv6 rejects malformed text', () => {
    for (const bad of [
      ':::',
      '1:2:3:4:5:6:7:8:9',
      '1:2:3:4:5:6:7',
      '1::2::3',
      '::1::',
      '1::2:3:4:5:6:7:8', // "::" must stand for at least one group
      '12345::',
      'g::',
      ':1::',
      '1:',
      ':1',
      '1:::2',
      '',
      '1.2.3.4',
      '::1.2.3',
      '::1.2.3.256',
      '::ffff:01.2.3.4',
      '1.2.3.4::', // a dotted quad only as the last 32 bits of the whole address
      '1:1.2.3.4::5',
      'fe80::1%', // an empty zone
      '::1.2.3.4:1',
      '1:2:3:4:5:6:7:1.2.3.4',
      '::-1',
      '::+1',
      ' ::1',
      '[::1]',
    ]) {
      assert.equal(parseIPv6(bad), null, JSON.stringify(bad));
    }
    assert.equal(parseIP(':::'), null);
    assert.equal(parseIP('1:2:3:4:5:6:7:8:9'), null);
  });

  test('RFC 5952: the longest zero run is compressed (the first on a tie), single zeros are not, hex is lowercase', () => {
    const cases: [string, string][] = [
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'],
      ['2001:db8:0:0:0:1:0:0', '2001:db8::1:0:0'],
      ['0:0:1:0:0:0:1:0', '0:0:1::1:0'],
      ['0:0:0:1:0:0:0:0', '0:0:0:1::'],
      ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
      ['0:1:0:1:0:1:0:1', '0:1:0:1:0:1:0:1'],
      ['2001:0DB8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
      ['ABCD:EF01:2345:6789:ABCD:EF01:2345:6789', 'abcd:ef01:2345:6789:abcd:ef01:2345:6789'],
      ['2001:db8::0001', '2001:db8::1'],
      ['2001:db8:00aa::', '2001:db8:aa::'],
      ['0:1:0:0:0:0:0:0', '0:1::'],
      ['0:0:0:0:0:0:1:0', '::1:0'],
    ];
    for (const [input, expected] of cases) assert.equal(formatIP(ip(input)), expected, input);
  });

  test('randomized: formatIP matches the WHATWG URL serializer and parses back (seeded)', () => {
    const rand = mulberry32(0xf0f0);
    const int = (n: number): number => Math.floor((rand() / 0x1_0000_0000) * n);
    for (let k = 0; k < 3000; k++) {
      const b = new Uint8Array(16);
      // mostly zero groups, so that runs of every length and position occur
      for (let g = 0; g < 8; g++) {
        if (int(2) === 0) continue;
        const v = int(3) === 0 ? int(16) : int(0x10000);
        b[2 * g] = v >> 8;
        b[2 * g + 1] = v & 0xff;
      }
      const full = Array.from({ length: 8 }, (_, g) => ((b[2 * g]! << 8) | b[2 * g + 1]!).toString(16).padStart(4, '0')).join(':');
      // WHATWG serializes IPv6 hosts per RFC 5952 (without the optional mixed IPv4 form)
      const reference = new URL(`http://[${full}]/`).hostname.slice(1, -1);
      const text = formatIP(b);
      if (!(b[10] === 0xff && b[11] === 0xff && b.subarray(0, 10).every((x) => x === 0))) assert.equal(text, reference, full);
      assert.deepEqual(parseIPv6(text), b, full);
      assert.deepEqual(parseIPv6(full), b, full);
      assert.deepEqual(parseIPv6(full.toUpperCase()), b, full);
    }
    for (let k = 0; k < 1000; k++) {
      const b = Uint8Array.from({ length: 4 }, () => int(256));
      assert.deepEqual(parseIPv4(formatIP(b)), b);
    }
  });

  test('prefixes: parse, mask the host bits, format', () => {
    const cases: [string, string][] = [
      ['10.1.2.3/8', '10.0.0.0/8'],
      ['10.1.2.3', '10.1.2.3/32'],
      ['0.0.0.0/0', '0.0.0.0/0'],
      ['255.255.255.255/0', '0.0.0.0/0'],
      ['192.168.1.255/31', '192.168.1.254/31'],
      ['172.31.255.255/12', '172.16.0.0/12'],
      ['2001:db8::1/32', '2001:db8::/32'],
      ['::1', '::1/128'],
      ['::/0', '::/0'],
      ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/65', 'ffff:ffff:ffff:ffff:8000::/65'],
    ];
    for (const [input, expected] of cases) {
      const p = parsePrefix(input);
      assert.notEqual(p, null, input);
      assert.equal(formatPrefix(p!), expected, input);
    }
    for (const bad of ['10.0.0.0/33', '::/129', '10.0.0.0/', '/8', '10.0.0.0/08', '10.0.0.0/8/8', '10.0.0.0/-1', '10.0.0.0/ 8', '1.2.3/8', 'x/8', 'fe80::1%eth0/64', '1.2.3.4::/64']) {
      assert.equal(parsePrefix(bad), null, bad);
    }
    assert.deepEqual(maskTo(ip('255.255.255.255'), 0), Uint8Array.of(0, 0, 0, 0));
    assert.deepEqual(maskTo(ip('255.255.255.255'), 13), Uint8Array.of(255, 248, 0, 0));
    assert.deepEqual(maskTo(ip('255.255.255.255'), 32), Uint8Array.of(255, 255, 255, 255));
    const input = ip('10.1.2.3');
    maskTo(input, 8);
    assert.deepEqual(input, Uint8Array.of(10, 1, 2, 3), 'maskTo does not modify its input');
  });
});
