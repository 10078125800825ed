import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AeadKey } from '../src/crypto/aead.ts';
import { fromHex, hex } from '../src/crypto/bytes.ts';
import { PresharedKey, PrivateKey, PublicKey } from '../src/crypto/keys.ts';
import {
  SymmetricState,
  readMessage1Payload,
  readMessage1Static,
  readMessage2,
  writeMessage1,
  writeMessage2,
} from '../src/wireguard/noise.ts';
import { IDENTIFIER, initiatorStart } from '../src/wireguard/handshake.ts';
import { loadVectors } from './vectors.ts';

interface Vector {
  protocol_name: string;
  init_prologue: string;
  init_psks: string[];
  init_static: string;
  init_ephemeral: string;
  init_remote_static: string;
  resp_static: string;
  resp_ephemeral: string;
  handshake_hash: string;
  messages: { payload: string; ciphertext: string }[];
}

test('cacophony Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s: both messages, handshake hash, transport', () => {
  const { vector: v } = loadVectors<{ vector: Vector }>('noise-ikpsk2.json');
  assert.equal(v.protocol_name, 'Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s');
  const iStatic = new PrivateKey(fromHex(v.init_static));
  const iEph = new PrivateKey(fromHex(v.init_ephemeral));
  const rStatic = new PrivateKey(fromHex(v.resp_static));
  const rEph = new PrivateKey(fromHex(v.resp_ephemeral));
  const psk = new PresharedKey(fromHex(v.init_psks[0]!));
  assert.ok(rStatic.publicKey().equals(new PublicKey(fromHex(v.init_remote_static))));

  const start = (): SymmetricState => {
    const s = SymmetricState.initialize(fromHex(v.init_prologue), v.protocol_name);
    s.mixHash(rStatic.publicKey().raw());
    return s;
  };
  const is = start();
  const rs = start();

  // Message 1: initiator -> responder.
  const m1 = v.messages[0]!;
  const w1 = writeMessage1(is, iStatic, iEph, rStatic.publicKey(), fromHex(m1.payload))!;
  const bytes1 = hex(w1.ephemeral) + hex(w1.encryptedStatic) + hex(w1.encryptedPayload);
  assert.equal(bytes1, m1.ciphertext);
  const c1 = fromHex(m1.ciphertext);
  const got = readMessage1Static(rs, rStatic, c1.subarray(0, 32), c1.subarray(32, 80))!;
  assert.ok(got.remoteStatic.equals(iStatic.publicKey()));
  assert.equal(hex(readMessage1Payload(rs, rStatic, got.remoteStatic, c1.subarray(80))!), m1.payload);

  // Message 2: responder -> initiator.
  const m2 = v.messages[1]!;
  const w2 = writeMessage2(rs, rEph, got.remoteEphemeral, got.remoteStatic, psk, fromHex(m2.payload))!;
  assert.equal(hex(w2.ephemeral) + hex(w2.encryptedPayload), m2.ciphertext);
  const c2 = fromHex(m2.ciphertext);
  assert.equal(hex(readMessage2(is, iStatic, iEph, psk, c2.subarray(0, 32), c2.subarray(32))!), m2.payload);

  // Both sides reach the vector's handshake hash.
  assert.equal(hex(is.h), v.handshake_hash);
  assert.equal(hex(rs.h), v.handshake_hash);

  // Transport: initiator sends with the first split key, responder with the second, nonces from 0.
  const [i2r, r2i] = is.split();
  const send = [new AeadKey(i2r), new AeadKey(r2i)];
  const nonces = [0n, 0n];
  for (let i = 2; i < v.messages.length; i++) {
    const m = v.messages[i]!;
    const dir = i % 2 === 0 ? 0 : 1;
    assert.equal(hex(send[dir]!.seal(nonces[dir]!, fromHex(m.payload))), m.ciphertext, `message ${i}`);
    nonces[dir]!++;
  }
  assert.ok(v.messages.length >= 3);
});

test('WireGuard initial chaining key and hash match boringtun constants', () => {
  const misc = loadVectors<{ initial_chaining_key: string; initial_hash: string }>('wireguard-misc.json');
  const s = SymmetricState.initialize(IDENTIFIER);
  assert.equal(hex(s.ck), misc.initial_chaining_key);
  assert.equal(hex(s.h), misc.initial_hash);
  // The initiator's start state then mixes in the responder's static key.
  const pub = PrivateKey.generate().publicKey();
  const st = initiatorStart(pub);
  assert.equal(hex(st.ck), misc.initial_chaining_key);
  assert.notEqual(hex(st.h), misc.initial_hash);
});
