/**
 * `strata dir …`: the directory authority's tools. Each authority keeps its key on its own
 * machine: `make` builds the unsigned consensus from signed relay descriptors, each authority
 * runs `sign` on it, `combine` gathers the signatures, `verify` checks a document against a
 * directory configuration, and `serve` publishes it (any static web server or file copy is as
 * good a mirror: the signatures, not the server, are what clients trust).
 */
import http from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { z } from 'zod';
import { StrataError } from '../crypto/errors.ts';
import { combine, consensusBodySchema, makeConsensus, parseConsensus, signConsensus, verifyConsensus, type ConsensusBody } from '../directory/consensus.ts';
import { signedDescriptorSchema } from '../directory/descriptor.ts';
import { SigningKey } from '../directory/ed25519.ts';
import { loadDirectoryConfig } from '../directory/config.ts';

function readJson(path: string, what: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new StrataError('ERR_FILE', `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function parseBody(path: string): ConsensusBody {
  const r = consensusBodySchema.safeParse(readJson(path, 'consensus body'));
  if (!r.success) throw new StrataError('ERR_DIR_MALFORMED', `${path}: ${r.error.issues[0]!.path.join('.')}: ${r.error.issues[0]!.message}`);
  return r.data;
}

const sigSchema = z.object({ authority: z.string(), signature: z.string() });

export function registerDir(program: Command, run: (f: () => Promise<void> | void) => Promise<void>): void {
  const dir = program.command('dir').description('directory authority tools: keygen, make, sign, combine, verify, serve');

  dir
    .command('keygen')
    .description("create an authority key (kept on the authority's own machine) and print its public key")
    .requiredOption('--out <file>', 'where to write the private key (mode 0600)')
    .action((o: { out: string }) =>
      run(() => {
        const k = SigningKey.generate();
        writeFileSync(o.out, k.toBase64() + '\n', { mode: 0o600, flag: 'wx' });
        process.stdout.write(k.publicKeyBase64 + '\n');
      }),
    );

  dir
    .command('make')
    .description('build an unsigned consensus from signed relay descriptors')
    .requiredOption('--serial <n>', 'serial number (must grow with every consensus)')
    .option('--valid-minutes <m>', 'how long it stays valid', '180')
    .option('--fresh-minutes <m>', 'how long it is fresh (clients refresh after)', '60')
    .requiredOption('--out <file>', 'the consensus body')
    .argument('<descriptors...>', 'files, each one signed descriptor (as `strata relay init` prints)')
    .action((files: string[], o: { serial: string; validMinutes: string; freshMinutes: string; out: string }) =>
      run(() => {
        const serial = Number(o.serial);
        if (!Number.isSafeInteger(serial) || serial < 0) throw new StrataError('ERR_OPTION', '--serial must be a non-negative integer');
        const descriptors = files.map((f) => {
          const r = signedDescriptorSchema.safeParse(readJson(f, 'descriptor'));
          if (!r.success) throw new StrataError('ERR_DESCRIPTOR_INVALID', `${f}: ${r.error.issues[0]!.path.join('.')}: ${r.error.issues[0]!.message}`);
          return r.data;
        });
        const now = Date.now();
        const body = makeConsensus(serial, {
          validAfter: new Date(now - 60_000),
          freshUntil: new Date(now + Number(o.freshMinutes) * 60_000),
          validUntil: new Date(now + Number(o.validMinutes) * 60_000),
        }, descriptors);
        writeFileSync(o.out, JSON.stringify(body, null, 2) + '\n');
        process.stdout.write(`consensus ${serial} with ${descriptors.length} relays\n`);
      }),
    );

  dir
    .command('sign')
    .description("sign a consensus body with this authority's key")
    .requiredOption('--key <file>', 'authority private key')
    .requiredOption('--out <file>', 'the signature')
    .argument('<body>', 'consensus body file')
    .action((bodyFile: string, o: { key: string; out: string }) =>
      run(() => {
        const key = SigningKey.parse(readFileSync(o.key, 'utf8'));
        writeFileSync(o.out, JSON.stringify(signConsensus(key, parseBody(bodyFile))) + '\n');
      }),
    );

  dir
    .command('combine')
    .description('put the authorities’ signatures on the consensus')
    .requiredOption('--out <file>', 'the signed consensus')
    .argument('<body>', 'consensus body file')
    .argument('<signatures...>', 'signature files')
    .action((bodyFile: string, sigs: string[], o: { out: string }) =>
      run(() => {
        const signatures = sigs.map((f) => {
          const r = sigSchema.safeParse(readJson(f, 'signature'));
          if (!r.success) throw new StrataError('ERR_DIR_MALFORMED', `${f} is not a signature`);
          return r.data;
        });
        writeFileSync(o.out, JSON.stringify(combine(parseBody(bodyFile), signatures)) + '\n');
      }),
    );

  dir
    .command('verify')
    .description('verify a signed consensus against a directory configuration')
    .requiredOption('--config <file>', 'directory configuration (authorities, threshold)')
    .argument('<consensus>', 'signed consensus file')
    .action((file: string, o: { config: string }) =>
      run(() => {
        const cfg = loadDirectoryConfig(o.config);
        const text = readFileSync(file, 'utf8');
        const v = verifyConsensus(parseConsensus(text), cfg.client.anchor, new Date());
        process.stdout.write(`valid: serial ${v.serial}, ${v.relays.length} relays, valid until ${v.validUntil.toISOString()}\n`);
      }),
    );

  dir
    .command('serve')
    .description('serve a consensus file over HTTP (re-read on every request)')
    .requiredOption('--file <file>', 'signed consensus file')
    .option('--port <port>', 'TCP port', '8080')
    .option('--address <address>', 'address to listen on', '127.0.0.1')
    .action((o: { file: string; port: string; address: string }) =>
      run(async () => {
        const server = http.createServer((req, res) => {
          if (req.method !== 'GET' || (req.url !== '/consensus.json' && req.url !== '/')) {
            res.writeHead(404).end();
            return;
          }
          try {
            const body = readFileSync(o.file);
            res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(body);
          } catch {
            res.writeHead(503).end();
          }
        });
        await new Promise<void>((resolve, reject) => {
          server.once('error', (e: NodeJS.ErrnoException) =>
            reject(new StrataError(e.code === 'EADDRINUSE' ? 'ERR_PORT_IN_USE' : 'ERR_LISTEN', `cannot listen: ${e.code ?? e.message}`)),
          );
          server.listen(Number(o.port), o.address, () => resolve());
        });
        process.stdout.write(`serving ${o.file} on port ${o.port}\n`);
      }),
    );
}
