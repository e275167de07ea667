// One HTTP request to the test authorization server on 127.0.0.1, for the kind end-to-end test:
// `kubectl exec -i ... -c idp -- node /source/idp_call.mjs` in the server's own container.
//
// The request is read from stdin as JSON, so that nothing (an access token in a header, a
// refresh token in a body) ever appears in a command line:
//   {"method": "POST", "path": "/_test/seed", "headers": {...}, "body": {...}}
// The answer is printed on stdout as one JSON line: {"status": N, "body": <JSON or text>}.
// Exit 0 once an answer arrived (whatever its status), 2 on a bad request or no answer.
// The server's port comes from IDP_PORT (default 9000).

const TIMEOUT_MS = 10_000;

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function fail(message) {
  process.stderr.write(`idp_call: ${message}\n`);
  process.exit(2);
}

let request;
try {
  request = JSON.parse(await readStdin());
} catch {
  fail('stdin is not a JSON request');
}
const { method = 'GET', path, headers = {}, body } = request ?? {};
if (typeof path !== 'string' || !path.startsWith('/')) fail('path must start with /');

const port = Number(process.env.IDP_PORT ?? '9000');
const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(TIMEOUT_MS) };
if (body !== undefined) {
  init.body = JSON.stringify(body);
  init.headers['content-type'] = 'application/json';
}

let response;
try {
  response = await fetch(`http://127.0.0.1:${port}${path}`, init);
} catch (err) {
  fail(`${method} ${path} got no answer: ${err.name}`);
}
const text = await response.text();
let parsed;
try {
  parsed = JSON.parse(text);
} catch {
  parsed = text;
}
process.stdout.write(`${JSON.stringify({ status: response.status, body: parsed })}\n`);
