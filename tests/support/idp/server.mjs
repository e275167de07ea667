// Test-only OAuth 2.0 authorization server: node oidc-provider 9.x with refresh-token rotation
// on every use, for token-sidecar's integration tests and local demo. NOT for production:
// storage is in memory, client secrets are test values, and the /_test/ control API below is
// unauthenticated. It only ever listens on 127.0.0.1.
//
// Usage: node server.mjs [--port 0] [--access-token-ttl 60] [--refresh-token-ttl 86400]
//                        [--device-code-ttl 600]
//        [--mtls-port 0 --tls-cert PEM --tls-key PEM --tls-client-ca PEM]
// Client secrets and client-jwt's public JWKS come from the environment (IDP_CLIENT_SECRETS,
// a JSON object client_id -> secret; IDP_CLIENT_JWKS, a JSON JWK Set); the defaults below let
// the server run on its own. Once listening it prints exactly one line on stdout:
// {"ready": true, "port": N, "issuer": "http://127.0.0.1:N"}. Nothing secret is ever printed.
//
// Client credentials and mutual TLS (RFC 8705): the confidential clients may also use the
// client_credentials grant. With --mtls-port, a second listener serves the same provider over
// HTTPS (certificate --tls-cert/--tls-key), asks every client for a certificate and accepts
// any (the provider decides: tls_client_auth needs one issued by --tls-client-ca whose subject
// matches the client's registration, self_signed_tls_client_auth one whose x5t#S256 is in the
// client's jwks); discovery then names it in mtls_endpoint_aliases.token_endpoint, and the
// ready line carries "mtls_port". More clients (such as the mTLS ones) come as a JSON list of
// client metadata in IDP_EXTRA_CLIENTS.
//
// Control API (test-only, same port, JSON in and out):
//   POST /_test/seed     {client_id, scope?, account_id?} -> {refresh_token, grant_id}
//   GET  /_test/stats    counters since the last reset (see newStats)
//   GET  /_test/ledger?since=N  every token request since the last reset, from entry N on
//                        (see noteRequest): who presented which refresh token, with what result
//   POST /_test/faults   one fault spec or a list, replacing the queue (see parseFault)
//   POST /_test/reset    clear faults and counters, restore start-up TTLs (grants survive)
//   POST /_test/revoke   {grant_id}: revoke a grant as an administrator would
//   POST /_test/settings {access_token_ttl?, refresh_token_ttl?, device_code_ttl?}: change
//                        TTLs of new tokens and device codes
//
// Operator seeding (`token-sidecar seed`, `retire`): the device authorization grant
// (RFC 8628, /device/auth, the user's side at /device), token revocation (RFC 7009,
// /token/revocation) and the development login and consent pages (plain HTML forms: any
// login name is accepted) are on. Every client may use the device flow; `client-native` is a
// public native app whose loopback redirect may use any port (RFC 8252 §7.3), and
// `client-no-refresh` a public client that is never issued a refresh token.

import { createHash, generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const TOKEN_PATH = '/token';
const REVOCATION_PATH = '/token/revocation'; // oidc-provider's default
const SCOPES = ['openid', 'offline_access', 'api:read'];
const GRANT_TTL = 30 * 24 * 3600; // outlives any refresh token, so expiry tests see the token's own

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'access-token-ttl': { type: 'string', default: '60' },
    'refresh-token-ttl': { type: 'string', default: String(24 * 3600) },
    'device-code-ttl': { type: 'string', default: '600' },
    'mtls-port': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'tls-client-ca': { type: 'string' },
  },
});

/** A client mistake in a control request or option; answered with 400. */
class BadRequest extends Error {}

function positiveInt(value, name) {
  const number = Number(value);
  if (!Number.isInteger(number) || number <= 0) {
    throw new BadRequest(`${name} must be a positive integer`);
  }
  return number;
}

const startSettings = Object.freeze({
  accessTokenTtl: positiveInt(args['access-token-ttl'], '--access-token-ttl'),
  refreshTokenTtl: positiveInt(args['refresh-token-ttl'], '--refresh-token-ttl'),
  deviceCodeTtl: positiveInt(args['device-code-ttl'], '--device-code-ttl'),
});
let settings = { ...startSettings };

// ---------------------------------------------------------------------------------------------
// Storage: oidc-provider's own memory adapter is a 1000-entry LRU, which silently loses grants
// in long runs. This one keeps everything until destroyed; the models check expiry themselves.

const records = new Map(); // `${model}:${id}` -> payload
const grantMembers = new Map(); // grantId -> Set of record keys
const secondaryIds = new Map(); // `${model}:uid:${uid}` or `${model}:userCode:${code}` -> id
const consumedRefreshTokens = new Map(); // jti -> grantId; kept across resets to detect reuse

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload) {
    const key = this.key(id);
    records.set(key, structuredClone(payload));
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (payload.uid) secondaryIds.set(`${this.model}:uid:${payload.uid}`, id);
    if (payload.userCode) secondaryIds.set(`${this.model}:userCode:${payload.userCode}`, id);
  }

  async find(id) {
    const payload = records.get(this.key(id));
    return payload === undefined ? undefined : structuredClone(payload);
  }

  async findByUid(uid) {
    const id = secondaryIds.get(`${this.model}:uid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = secondaryIds.get(`${this.model}:userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = records.get(this.key(id));
    if (!payload) return;
    if (payload.consumed && this.model === 'RefreshToken') {
      // Two requests raced past the provider's own "already used" check with one token.
      recordReuse(payload.grantId);
    }
    payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    records.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const members = grantMembers.get(grantId);
    if (!members) return;
    const prefix = `${this.model}:`;
    for (const key of members) {
      if (key.startsWith(prefix)) {
        records.delete(key);
        members.delete(key);
      }
    }
    if (members.size === 0) grantMembers.delete(grantId);
  }
}

// ---------------------------------------------------------------------------------------------
// Counters for /_test/stats.

function newStats() {
  return {
    token_requests: 0, // every POST to the token endpoint, faulted or not
    refresh_succeeded: 0,
    refresh_invalid_grant: 0,
    refresh_errors: {}, // other OAuth error codes on refresh requests -> count
    refresh_token_reuse: 0, // presentations of an already consumed refresh token
    reuse_by_grant: {}, // grant_id -> presentations of its consumed tokens
    grants_revoked: 0,
    revoked_grants: [],
    grants_seeded: 0,
    faults_applied: 0,
    refresh_by_grant: {}, // grant_id -> successful refreshes with its tokens
    device_polls: 0, // device_code grant requests, answered or not
    revocation_requests: 0, // POSTs to the revocation endpoint
    client_credentials_issued: 0,
    client_credentials_by_client: {}, // client_id -> tokens issued with client_credentials
    client_credentials_errors: {}, // OAuth error codes on client_credentials requests -> count
    client_certificates: {}, // x5t#S256 of a certificate presented at the token endpoint -> count
    bound_tokens: {}, // x5t#S256 an issued client_credentials token is bound to -> count
  };
}

let stats = newStats();

function recordReuse(grantId) {
  stats.refresh_token_reuse += 1;
  const key = grantId ?? 'unknown';
  stats.reuse_by_grant[key] = (stats.reuse_by_grant[key] ?? 0) + 1;
}

// ---------------------------------------------------------------------------------------------
// The ledger: one entry per POST to the token endpoint, so a test can tell from the server's own
// records which refresh token was presented how often, by whom, and what became of it. Tokens
// appear only as fingerprints. `replica` is the `replica` query parameter of the token endpoint
// URL (a test gives each client its own), `fault` the injected fault's mode, `reached` whether
// the provider saw the request, `outcome` "rotated" or the OAuth error code, `answered` whether
// the answer was written to a connection still open, `status` its HTTP status, `done` whether
// the request has finished.

let ledger = [];

function tokenFingerprint(token) {
  return typeof token === 'string' && token
    ? createHash('sha256').update(token).digest('hex').slice(0, 16)
    : null;
}

function noteRequest(ctx, fault) {
  const entry = {
    seq: ledger.length,
    at: Date.now() / 1000,
    replica: typeof ctx.query.replica === 'string' ? ctx.query.replica : null,
    fault: fault?.mode ?? null,
    reached: false,
    token: null,
    grant: null,
    outcome: null,
    answered: false,
    status: null,
    done: false,
  };
  ledger.push(entry);
  return entry;
}

function noteProviderAnswer(ctx, entry) {
  const params = refreshParams(ctx);
  entry.token = tokenFingerprint(params?.refresh_token);
  entry.grant = consumedRefreshTokens.get(params?.refresh_token) ?? null;
  entry.outcome = ctx.status === 200 ? 'rotated' : (ctx.body?.error ?? String(ctx.status));
}

function isClientCredentials(ctx) {
  return ctx.oidc?.params?.grant_type === 'client_credentials';
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS: the peer certificate of the HTTPS listener's socket, handed to the provider.

function peerCertificate(ctx) {
  const { socket } = ctx.req;
  if (typeof socket.getPeerX509Certificate !== 'function') return undefined; // plain http
  return socket.getPeerX509Certificate();
}

function thumbprint(cert) {
  return createHash('sha256').update(cert.raw).digest('base64url');
}

const mTLS = {
  enabled: true,
  certificateBoundAccessTokens: true,
  tlsClientAuth: true,
  selfSignedTlsClientAuth: true,
  getCertificate(ctx) {
    const cert = peerCertificate(ctx);
    return cert ? cert.toString() : undefined;
  },
  // Node verified the chain against --tls-client-ca (requestCert with rejectUnauthorized off).
  certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
  certificateSubjectMatches(ctx, property, expected) {
    const cert = peerCertificate(ctx);
    if (!cert) return false;
    switch (property) {
      case 'tls_client_auth_subject_dn':
        return cert.subject.split('\n').join(',') === expected;
      case 'tls_client_auth_san_dns':
        return (cert.subjectAltName ?? '').split(', ').includes(`DNS:${expected}`);
      default:
        return false;
    }
  },
};

function refreshParams(ctx) {
  const params = ctx.oidc?.params;
  return params?.grant_type === 'refresh_token' ? params : undefined;
}

// ---------------------------------------------------------------------------------------------
// Faults, applied to POST /token only, in queue order; each applies to `count` requests
// (-1: until reset). Modes:
//   status / raw       answer {status, body, content_type, retry_after?, headers?} without
//                      asking the provider (status defaults to 503 and a JSON
//                      temporarily_unavailable body; raw defaults to 200 and requires body)
//   hang               hold the request {seconds}; then `then: "forward"` (default) passes it to
//                      the provider if the client is still connected (a slow server; a client
//                      that gave up never reaches the provider), `then: "close"` drops the
//                      connection without an answer
//   drop_after_commit  let the provider process the request for real (a refresh rotates and is
//                      committed), then destroy the socket instead of answering

let faults = [];

function parseFault(spec) {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) {
    throw new BadRequest('a fault must be a JSON object');
  }
  const { mode } = spec;
  const count = spec.count ?? 1;
  if (!(Number.isInteger(count) && (count >= 1 || count === -1))) {
    throw new BadRequest('count must be a positive integer or -1 (until reset)');
  }
  const fault = { mode, count };
  switch (mode) {
    case 'status':
    case 'raw': {
      fault.status = spec.status ?? (mode === 'raw' ? 200 : 503);
      if (!Number.isInteger(fault.status) || fault.status < 200 || fault.status > 599) {
        throw new BadRequest('status must be an integer from 200 to 599');
      }
      if (mode === 'raw' && typeof spec.body !== 'string') {
        throw new BadRequest('raw mode requires a string body');
      }
      fault.body = spec.body ?? JSON.stringify({
        error: 'temporarily_unavailable',
        error_description: 'injected fault',
      });
      if (typeof fault.body !== 'string') throw new BadRequest('body must be a string');
      fault.contentType = spec.content_type ?? 'application/json';
      fault.headers = { ...spec.headers };
      if (spec.retry_after !== undefined && spec.retry_after !== null) {
        fault.headers['Retry-After'] = String(spec.retry_after);
      }
      break;
    }
    case 'hang':
      fault.seconds = spec.seconds ?? 5;
      if (typeof fault.seconds !== 'number' || fault.seconds < 0) {
        throw new BadRequest('seconds must be a non-negative number');
      }
      fault.then = spec.then ?? 'forward';
      if (!['forward', 'close'].includes(fault.then)) {
        throw new BadRequest('then must be "forward" or "close"');
      }
      break;
    case 'drop_after_commit':
      break;
    default:
      throw new BadRequest('mode must be one of status, raw, hang, drop_after_commit');
  }
  return fault;
}

function takeFault() {
  const fault = faults[0];
  if (!fault) return undefined;
  if (fault.count !== -1) {
    fault.count -= 1;
    if (fault.count === 0) faults.shift();
  }
  return fault;
}

/** Read the whole body (answering before it is read can reset the connection). */
async function drain(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/** Resolve true if the client hung up before `seconds` passed, false otherwise. */
function holdOrHangUp(socket, seconds) {
  return new Promise((resolve) => {
    if (socket.destroyed) {
      resolve(true);
      return;
    }
    const onClose = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      socket.off('close', onClose);
      resolve(false);
    }, seconds * 1000);
    socket.once('close', onClose);
  });
}

function dropConnection(ctx) {
  ctx.respond = false;
  ctx.req.socket.destroy();
}

async function handleTokenRequest(ctx, next) {
  stats.token_requests += 1;
  const cert = peerCertificate(ctx);
  if (cert) {
    const x5t = thumbprint(cert);
    stats.client_certificates[x5t] = (stats.client_certificates[x5t] ?? 0) + 1;
  }
  const fault = takeFault();
  const entry = noteRequest(ctx, fault);
  const provider = async () => {
    entry.reached = true;
    await next();
    noteProviderAnswer(ctx, entry);
  };
  try {
    if (!fault) {
      await provider();
      entry.answered = !ctx.req.socket.destroyed;
      return undefined;
    }
    stats.faults_applied += 1;
    switch (fault.mode) {
      case 'status':
      case 'raw': {
        const body = new URLSearchParams(await drain(ctx.req));
        entry.token = tokenFingerprint(body.get('refresh_token'));
        ctx.status = fault.status;
        ctx.body = fault.body;
        ctx.type = fault.contentType;
        ctx.set({ 'Cache-Control': 'no-store', ...fault.headers });
        entry.answered = true;
        return undefined;
      }
      case 'hang': {
        const hungUp = await holdOrHangUp(ctx.req.socket, fault.seconds);
        if (hungUp || fault.then === 'close') {
          dropConnection(ctx);
          return undefined;
        }
        await provider();
        entry.answered = !ctx.req.socket.destroyed;
        return undefined;
      }
      case 'drop_after_commit':
        await provider();
        dropConnection(ctx);
        return undefined;
      default:
        throw new Error('unreachable');
    }
  } finally {
    if (entry.answered) entry.status = ctx.status;
    entry.done = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Control API handlers.

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new BadRequest('body too large');
    chunks.push(chunk);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new BadRequest('body is not JSON');
  }
}

function requireString(body, name) {
  const value = body[name];
  if (typeof value !== 'string' || value === '') throw new BadRequest(`${name} is required`);
  return value;
}

async function seed(provider, body) {
  const clientId = requireString(body, 'client_id');
  const scope = body.scope ?? 'openid offline_access';
  const accountId = body.account_id ?? 'test-user';
  const client = await provider.Client.find(clientId);
  if (!client) throw new BadRequest(`unknown client_id ${clientId}`);
  const unknown = String(scope).split(' ').filter((s) => !SCOPES.includes(s));
  if (unknown.length) throw new BadRequest(`unknown scope ${unknown.join(' ')}`);

  // What a completed authorization_code flow with offline_access would have stored.
  const grant = new provider.Grant({ accountId, clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const now = Math.floor(Date.now() / 1000);
  const refreshToken = new provider.RefreshToken({
    accountId,
    authTime: now,
    client,
    expiresWithSession: false, // not tied to a browser session, like a service's offline grant
    grantId,
    gty: 'authorization_code',
    rotations: 0,
    scope,
    sessionUid: randomUUID(),
  });
  const value = await refreshToken.save();
  stats.grants_seeded += 1;
  return { refresh_token: value, grant_id: grantId };
}

async function revokeGrant(provider, body) {
  const grantId = requireString(body, 'grant_id');
  const grant = await provider.Grant.find(grantId, { ignoreExpiration: true });
  const { AccessToken, AuthorizationCode, RefreshToken } = provider;
  await Promise.all([AccessToken, AuthorizationCode, RefreshToken]
    .map((model) => model.revokeByGrantId(grantId)));
  await provider.Grant.adapter.destroy(grantId);
  if (grant) {
    stats.grants_revoked += 1;
    stats.revoked_grants.push(grantId);
  }
  return { revoked: Boolean(grant) };
}

function changeSettings(body) {
  if (body.access_token_ttl !== undefined) {
    settings.accessTokenTtl = positiveInt(body.access_token_ttl, 'access_token_ttl');
  }
  if (body.refresh_token_ttl !== undefined) {
    settings.refreshTokenTtl = positiveInt(body.refresh_token_ttl, 'refresh_token_ttl');
  }
  if (body.device_code_ttl !== undefined) {
    settings.deviceCodeTtl = positiveInt(body.device_code_ttl, 'device_code_ttl');
  }
  return {
    access_token_ttl: settings.accessTokenTtl,
    refresh_token_ttl: settings.refreshTokenTtl,
    device_code_ttl: settings.deviceCodeTtl,
  };
}

async function handleControl(provider, ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  ctx.set('Cache-Control', 'no-store');
  try {
    switch (route) {
      case 'GET /_test/stats':
        ctx.body = { ...stats, faults_pending: faults.map((f) => ({ mode: f.mode, count: f.count })) };
        return;
      case 'GET /_test/ledger':
        ctx.body = ledger.slice(Number.parseInt(ctx.query.since ?? '0', 10) || 0);
        return;
      case 'POST /_test/seed':
        ctx.body = await seed(provider, await readJson(ctx.req));
        return;
      case 'POST /_test/faults': {
        const body = await readJson(ctx.req);
        faults = (Array.isArray(body) ? body : [body]).map(parseFault);
        ctx.body = { faults: faults.length };
        return;
      }
      case 'POST /_test/reset':
        await drain(ctx.req);
        faults = [];
        stats = newStats();
        ledger = [];
        settings = { ...startSettings };
        ctx.body = { reset: true };
        return;
      case 'POST /_test/revoke':
        ctx.body = await revokeGrant(provider, await readJson(ctx.req));
        return;
      case 'POST /_test/settings':
        ctx.body = changeSettings(await readJson(ctx.req));
        return;
      default:
        ctx.status = 404;
        ctx.body = { error: `no control route ${route}` };
    }
  } catch (err) {
    if (!(err instanceof BadRequest)) throw err;
    ctx.status = 400;
    ctx.body = { error: err.message };
  }
}

// ---------------------------------------------------------------------------------------------
// The provider.

function clientsFromEnv(redirectUri) {
  const secrets = {
    'client-basic': 'client-basic-test-secret',
    'client-post': 'client-post-test-secret',
    ...JSON.parse(process.env.IDP_CLIENT_SECRETS ?? '{}'),
  };
  const confidential = ['authorization_code', 'refresh_token', 'client_credentials'];
  const common = {
    grant_types: ['authorization_code', 'refresh_token'],
    redirect_uris: [redirectUri],
    response_types: ['code'],
    scope: SCOPES.join(' '),
  };
  const clients = [
    {
      ...common,
      client_id: 'client-basic',
      grant_types: confidential,
      client_secret: secrets['client-basic'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      ...common,
      client_id: 'client-post',
      grant_types: confidential,
      client_secret: secrets['client-post'],
      token_endpoint_auth_method: 'client_secret_post',
    },
    { ...common, client_id: 'client-public', token_endpoint_auth_method: 'none' },
  ];
  if (process.env.IDP_CLIENT_JWKS) {
    clients.push({
      ...common,
      client_id: 'client-jwt',
      grant_types: confidential,
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: JSON.parse(process.env.IDP_CLIENT_JWKS),
    });
  } else {
    process.stderr.write('IDP_CLIENT_JWKS not set: client-jwt is not registered\n');
  }
  for (const extra of JSON.parse(process.env.IDP_EXTRA_CLIENTS ?? '[]')) {
    clients.push({ ...common, ...extra });
  }
  return withSeeding(clients);
}

const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';

/** Operator seeding: the device flow for every client, plus a public native app. */
function withSeeding(clients) {
  const seeding = clients.map((client) => ({
    ...client,
    grant_types: [...client.grant_types, DEVICE_CODE],
  }));
  seeding.push({
    client_id: 'client-native',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token', DEVICE_CODE],
    redirect_uris: ['http://127.0.0.1/callback'],
    response_types: ['code'],
    scope: SCOPES.join(' '),
  });
  // A client the server issues no refresh token to (it lacks the refresh_token grant).
  seeding.push({
    client_id: 'client-no-refresh',
    token_endpoint_auth_method: 'none',
    grant_types: [DEVICE_CODE],
    redirect_uris: [],
    response_types: [],
    scope: SCOPES.join(' '),
  });
  return seeding;
}

function signingKeys() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' }] };
}

function createProvider(issuer) {
  const provider = new Provider(issuer, {
    adapter: MapAdapter,
    clients: clientsFromEnv(`${issuer}/callback`),
    jwks: signingKeys(),
    scopes: SCOPES,
    routes: { token: TOKEN_PATH },
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_post',
      'private_key_jwt',
      'tls_client_auth',
      'self_signed_tls_client_auth',
      'none',
    ],
    features: {
      devInteractions: { enabled: true }, // the login and consent forms seeding tests drive
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      clientCredentials: { enabled: true },
      mTLS,
    },
    findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
    issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    ttl: {
      AccessToken: () => settings.accessTokenTtl,
      RefreshToken: () => settings.refreshTokenTtl,
      Grant: GRANT_TTL,
      IdToken: 3600,
      AuthorizationCode: 60,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      ClientCredentials: () => settings.accessTokenTtl,
      DeviceCode: () => settings.deviceCodeTtl,
      BackchannelAuthenticationRequest: 600,
      PreAuthorizedCode: 600,
    },
  });

  provider.on('grant.success', (ctx) => {
    if (refreshParams(ctx)) {
      stats.refresh_succeeded += 1;
      const grantId = ctx.oidc.entities?.RefreshToken?.grantId ?? 'unknown';
      stats.refresh_by_grant[grantId] = (stats.refresh_by_grant[grantId] ?? 0) + 1;
    }
  });
  provider.on('grant.success', (ctx) => {
    if (ctx.oidc.params?.grant_type === DEVICE_CODE) stats.device_polls += 1;
  });
  provider.on('grant.error', (ctx) => {
    if (ctx.oidc.params?.grant_type === DEVICE_CODE) stats.device_polls += 1;
  });
  provider.on('grant.success', (ctx) => {
    if (isClientCredentials(ctx)) {
      stats.client_credentials_issued += 1;
      const { clientId } = ctx.oidc.client;
      stats.client_credentials_by_client[clientId] =
        (stats.client_credentials_by_client[clientId] ?? 0) + 1;
      const bound = ctx.oidc.entities.ClientCredentials?.['x5t#S256'];
      if (bound) stats.bound_tokens[bound] = (stats.bound_tokens[bound] ?? 0) + 1;
    }
  });
  provider.on('grant.error', (ctx, err) => {
    if (isClientCredentials(ctx)) {
      stats.client_credentials_errors[err.error] =
        (stats.client_credentials_errors[err.error] ?? 0) + 1;
    }
    const params = refreshParams(ctx);
    if (!params) return;
    if (err.error === 'invalid_grant') {
      stats.refresh_invalid_grant += 1;
    } else {
      stats.refresh_errors[err.error] = (stats.refresh_errors[err.error] ?? 0) + 1;
    }
    const presented = params.refresh_token;
    const consumedHere = ctx.oidc.entities?.RotatedRefreshToken?.jti === presented;
    if (consumedRefreshTokens.has(presented) && !consumedHere) {
      recordReuse(consumedRefreshTokens.get(presented));
    }
  });
  provider.on('refresh_token.consumed', (token) => {
    consumedRefreshTokens.set(token.jti, token.grantId);
  });
  provider.on('grant.revoked', (ctx, grantId) => {
    stats.grants_revoked += 1;
    stats.revoked_grants.push(grantId);
  });
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error on ${ctx.method} ${ctx.path}: ${err.message}\n`);
  });

  provider.use(async (ctx, next) => {
    if (ctx.path.startsWith('/_test/')) return handleControl(provider, ctx);
    if (ctx.method === 'POST' && ctx.path === TOKEN_PATH) return handleTokenRequest(ctx, next);
    if (ctx.method === 'POST' && ctx.path === REVOCATION_PATH) stats.revocation_requests += 1;
    return next();
  });
  return provider;
}

// The issuer names the port, so listen first (port 0 lets the OS pick a free one), then build
// the provider and hand it the requests.
const server = http.createServer();
server.on('error', (err) => {
  process.stderr.write(`cannot listen on ${HOST}:${args.port}: ${err.message}\n`);
  process.exit(1);
});
// The mutual-TLS listener, when asked for: same provider, HTTPS, client certificates requested.
const mtlsServer = args['mtls-port'] === undefined ? undefined : https.createServer({
  cert: readFileSync(args['tls-cert']),
  key: readFileSync(args['tls-key']),
  ca: args['tls-client-ca'] ? readFileSync(args['tls-client-ca']) : undefined,
  requestCert: true,
  rejectUnauthorized: false,
});

/** Name the mTLS listener in discovery (RFC 8705 §5); oidc-provider does not do it itself. */
function withMtlsAlias(mtlsPort) {
  // RFC 8705 §5: the back-channel endpoints a certificate is presented at, on the mTLS
  // listener (the same provider, so the same paths).
  const origin = `https://${HOST}:${mtlsPort}`;
  const aliased = ['token_endpoint', 'device_authorization_endpoint', 'revocation_endpoint'];
  return async (ctx, next) => {
    await next();
    if (ctx.path.startsWith('/.well-known/') && ctx.status === 200 && ctx.body) {
      const aliases = {};
      for (const name of aliased) {
        if (typeof ctx.body[name] === 'string') {
          aliases[name] = origin + new URL(ctx.body[name]).pathname;
        }
      }
      ctx.body = { ...ctx.body, mtls_endpoint_aliases: aliases };
    }
  };
}

function listen(target, port) {
  return new Promise((resolve) => {
    target.listen(port, HOST, () => resolve(target.address().port));
  });
}

server.listen(Number(args.port), HOST, async () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  const provider = createProvider(issuer);
  const ready = { ready: true, port, issuer };
  if (mtlsServer) {
    mtlsServer.on('error', (err) => {
      process.stderr.write(`cannot listen for mTLS on ${HOST}: ${err.message}\n`);
      process.exit(1);
    });
    ready.mtls_port = await listen(mtlsServer, Number(args['mtls-port']));
    provider.use(withMtlsAlias(ready.mtls_port));
    mtlsServer.on('request', provider.callback());
  }
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify(ready)}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    mtlsServer?.close();
    mtlsServer?.closeAllConnections();
    process.exit(0);
  });
}
