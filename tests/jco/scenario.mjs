// Plays the gocept.lockd scenario against lockd's lock component in
// Node.js: jco transpiles the component, preview2-shim provides WASI, and
// the lock directory is the only preopen. Usage:
//   node scenario.mjs TRANSPILED_DIR LOCK_DIR
// Prints one line per call: the call, then its result or error.
import { pathToFileURL } from 'node:url';
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';

const [transpiled, lockDir] = process.argv.slice(2);
_setPreopens({ '/': lockDir });
const { locks } = await import(pathToFileURL(`${transpiled}/lockd.js`));

function show(call, thunk) {
  let outcome;
  try {
    const value = thunk();
    outcome = value === undefined ? 'ok' : JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? Number(v) : v));
  } catch (e) {
    const payload = e.payload ?? e;
    outcome = `error ${payload.tag}${payload.val === undefined ? '' : ` ${JSON.stringify(payload.val)}`}`;
  }
  console.log(`${call} -> ${outcome}`);
}

const report = locks.open({ durability: 'always', lockDelayMs: 0n });
console.log(`open -> held ${report.held}`);
show("lock('resource1', 'client1')", () => locks.lock('resource1', 'client1'));
show("lock('resource1', 'client2')", () => locks.lock('resource1', 'client2'));
show("lock('resource2', 'client2')", () => locks.lock('resource2', 'client2'));
show("unlock('resource1', 'client2')", () => locks.unlock('resource1', 'client2'));
show("unlock('resource1', 'client1')", () => locks.unlock('resource1', 'client1'));
show("unlock('resource1', 'client1')", () => locks.unlock('resource1', 'client1'));
show("holder('resource2')", () => locks.holder('resource2'));
const [acquired] = locks.apply([
  { tag: 'acquire', val: { resource: 'vm/1', client: 'node', ttlMs: undefined, reentrant: false } },
]);
show("apply([acquire('vm/1', 'node')])", () => {
  if (acquired.tag === 'err') throw { payload: acquired.val };
  return { client: acquired.val.val.client, token: acquired.val.val.token };
});
