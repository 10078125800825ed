/**
 * The pure TypeScript path stays a tested fallback: with the native addon present, the
 * protocol suites run again in a child process with STRATA_NATIVE=0 (node:crypto AEAD).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { native, nativeUnavailableReason } from '../src/native/index.ts';
import { AeadKey } from '../src/crypto/aead.ts';

test('the native addon is in use (built by npm ci), or the reason is printed', (t) => {
  if (native === null) {
    console.log(`native addon unavailable: ${nativeUnavailableReason}; the pure TypeScript path is what runs`);
    t.skip(`native addon unavailable: ${nativeUnavailableReason}`);
    return;
  }
  assert.equal(AeadKey.backend, 'native');
});

test('protocol suites pass on the pure TypeScript path (STRATA_NATIVE=0)', (t) => {
  if (native === null) {
    t.skip('the whole suite already runs on the pure TypeScript path');
    return;
  }
  const files = ['test/crypto.test.ts', 'test/core.test.ts', 'test/malformed.test.ts', 'test/noise.test.ts'];
  const r = spawnSync(process.execPath, ['--test', '--test-reporter=dot', ...files], {
    cwd: new URL('..', import.meta.url).pathname,
    env: { ...process.env, STRATA_NATIVE: '0' },
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('native and node:crypto transport keys produce the same bytes', (t) => {
  if (native === null) {
    t.skip('native addon unavailable');
    return;
  }
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { AeadKey } from './src/crypto/aead.ts';
       const key = new Uint8Array(32).map((_, i) => i * 7);
       const pt = new Uint8Array(1000).map((_, i) => i);
       const out = new Uint8Array(1000 + 8 + 16);
       new AeadKey(Uint8Array.from(key)).sealPaddedInto(123456789n, pt, 8, out, 0);
       process.stdout.write(Buffer.from(out).toString('hex'));`,
    ],
    { cwd: new URL('..', import.meta.url).pathname, env: { ...process.env, STRATA_NATIVE: '0' }, encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  const key = new Uint8Array(32).map((_, i) => i * 7);
  const pt = new Uint8Array(1000).map((_, i) => i);
  const out = new Uint8Array(1000 + 8 + 16);
  new AeadKey(Uint8Array.from(key)).sealPaddedInto(123456789n, pt, 8, out, 0);
  assert.equal(Buffer.from(out).toString('hex'), r.stdout);
  const opened = new AeadKey(Uint8Array.from(key)).open(123456789n, out);
  assert.deepEqual(opened?.subarray(0, 1000), pt);
});
