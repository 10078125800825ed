import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReplayFilter } from '../src/wireguard/replay.ts';
import { REJECT_AFTER_MESSAGES } from '../src/wireguard/constants.ts';
import { loadVectors } from './vectors.ts';

type Step =
  | { counter: string; accept: boolean }
  | { loop: { from: string; to: string; step: number; inclusive: boolean; accept: boolean } };
interface Suite {
  constants: Record<string, unknown>;
  sections: { name: string; reset_before: boolean; steps: Step[] }[];
}

function run(suite: Suite, limit: bigint): number {
  const f = new ReplayFilter();
  let checked = 0;
  for (const section of suite.sections) {
    if (section.reset_before) f.reset();
    for (const step of section.steps) {
      if ('loop' in step) {
        const { from, to, step: d, accept } = step.loop;
        const end = BigInt(to);
        for (let i = BigInt(from); d > 0 ? i <= end : i >= end; i += BigInt(d)) {
          assert.equal(f.validate(i, limit), accept, `${section.name}: counter ${i}`);
          checked++;
        }
      } else {
        assert.equal(f.validate(BigInt(step.counter), limit), step.accept, `${section.name}: counter ${step.counter}`);
        checked++;
      }
    }
  }
  return checked;
}

test('replay window: the kernel selftest (selftest/counter.c) cases', () => {
  const v = loadVectors<{ kernel: Suite }>('replay-counter.json');
  assert.equal(v.kernel.constants['COUNTER_WINDOW_SIZE'], 8128);
  const limit = BigInt(v.kernel.constants['REJECT_AFTER_MESSAGES'] as string);
  assert.ok(run(v.kernel, limit) > 40000);
});

test('replay window: wireguard-go replay_test.go cases, with its RejectAfterMessages', () => {
  const v = loadVectors<{ wireguard_go: Suite }>('replay-counter.json');
  const limit = BigInt(v.wireguard_go.constants['RejectAfterMessages'] as string);
  assert.equal(limit, REJECT_AFTER_MESSAGES);
  assert.ok(run(v.wireguard_go, limit) > 40000);
});

test('replay window: exact 8128 edge and far jumps', () => {
  const f = new ReplayFilter();
  assert.ok(f.validate(10000n, REJECT_AFTER_MESSAGES));
  assert.ok(f.validate(10000n - 8128n, REJECT_AFTER_MESSAGES));
  assert.ok(!f.validate(10000n - 8129n, REJECT_AFTER_MESSAGES));
  assert.ok(f.validate(1n << 40n, REJECT_AFTER_MESSAGES));
  assert.ok(!f.validate(10001n, REJECT_AFTER_MESSAGES));
  assert.ok(!f.validate(REJECT_AFTER_MESSAGES, REJECT_AFTER_MESSAGES));
});
