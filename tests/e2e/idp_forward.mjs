// TCP forwarder for the kind end-to-end test (tests/e2e/manifests/idp.yaml).
//
// The test authorization server (tests/support/idp/server.mjs) only ever listens on 127.0.0.1.
// This process runs as a second container of the same pod, so it shares that loopback, and
// exposes the server on the pod's IP: FORWARD_LISTEN_HOST:FORWARD_LISTEN_PORT (default
// 0.0.0.0:8080) to 127.0.0.1:FORWARD_TARGET_PORT (default 9000). Bytes are passed unchanged.

import net from 'node:net';

function port(name, fallback) {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(value) || value <= 0 || value > 65535) {
    process.stderr.write(`${name} must be a TCP port\n`);
    process.exit(2);
  }
  return value;
}

const listenHost = process.env.FORWARD_LISTEN_HOST ?? '0.0.0.0';
const listenPort = port('FORWARD_LISTEN_PORT', '8080');
const targetHost = process.env.FORWARD_TARGET_HOST ?? '127.0.0.1';
const targetPort = port('FORWARD_TARGET_PORT', '9000');

const server = net.createServer((client) => {
  const upstream = net.connect(targetPort, targetHost);
  // Either side failing ends both; a clean end on one side is passed on by pipe().
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.pipe(upstream).pipe(client);
});
server.on('error', (err) => {
  process.stderr.write(`cannot listen on ${listenHost}:${listenPort}: ${err.message}\n`);
  process.exit(1);
});
server.listen(listenPort, listenHost, () => {
  const { port: bound } = server.address();
  process.stdout.write(`${JSON.stringify({ ready: true, port: bound, target: targetPort })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
