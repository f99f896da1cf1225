// TEST-ONLY OpenID provider for hubgate's authentication tests.
//
// panva's `oidc-provider` 9.x on 127.0.0.1 (never another interface), with:
//   * clients
//       hubgate              public client (PKCE), redirect URIs from --redirect-uri
//       hubgate-confidential client_secret_basic (+PKCE), secret from --client-secret,
//                            same redirect URIs
//       test-cli             public client the tests use to get tokens without a
//                            browser; redirect URI http://127.0.0.1:9/test-cli/callback
//                            (never contacted: the test reads the code from Location)
//   * accounts alice, bob, carol, dave (password "test-password"; alice also needs
//     otp=123456) with MFA claims; the login form may override amr, acr and auth_time
//   * claims preferred_username, email, groups, acr, amr, auth_time in ID tokens and in
//     JWT access tokens (audience "jupyterhub")
//   * signing keys from a private JWKS file (first key of each alg signs; all are
//     published); SIGHUP re-reads the file and swaps in a new Provider that shares the
//     in-memory store, so sessions, grants and codes survive a key rotation.
//
// Usage: node provider.mjs --jwks FILE [--redirect-uri URI]... [--client-secret S]
//                          [--id-token-alg RS256|ES256|EdDSA] [--at-alg ALG]
//                          [--at-ttl SECONDS] [--port N] [--step-up-mfa]
//                          [--logout-origin ORIGIN]
//   --logout-origin: see the "logout" block below (RP-initiated and back-channel logout).
// Prints `listening http://127.0.0.1:<port>` on stdout once it accepts connections,
// and `reloaded <n> keys` after each SIGHUP.
import http from 'node:http';
import fs from 'node:fs';
import { URLSearchParams } from 'node:url';
import Provider from 'oidc-provider';

// ------------------------------------------------------------------ arguments
const opts = {
  jwks: null,
  redirectUris: [],
  clientSecret: null,
  idTokenAlg: 'RS256',
  atAlg: 'RS256',
  atTtl: 300,
  port: 0,
  logoutOrigin: null,
};
{
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 1) {
    const v = a[i + 1];
    switch (a[i]) {
      case '--jwks': opts.jwks = v; i += 1; break;
      case '--redirect-uri': opts.redirectUris.push(v); i += 1; break;
      case '--client-secret': opts.clientSecret = v; i += 1; break;
      case '--id-token-alg': opts.idTokenAlg = v; i += 1; break;
      case '--at-alg': opts.atAlg = v; i += 1; break;
      case '--at-ttl': opts.atTtl = Number(v); i += 1; break;
      case '--port': opts.port = Number(v); i += 1; break;
      case '--step-up-mfa': opts.stepUpMfa = true; break; // see "step-up" below
      case '--logout-origin': opts.logoutOrigin = v; i += 1; break;
      default:
        console.error(`provider.mjs: unknown argument ${a[i]}`);
        process.exit(2);
    }
  }
  if (process.env.HUBGATE_OIDC_REDIRECT_URIS) {
    opts.redirectUris.push(...process.env.HUBGATE_OIDC_REDIRECT_URIS.split(',').filter(Boolean));
  }
  if (!opts.jwks) {
    console.error('provider.mjs: --jwks FILE is required');
    process.exit(2);
  }
}

const TEST_CLI_REDIRECT = 'http://127.0.0.1:9/test-cli/callback';
const MFA = 'https://refeds.org/profile/mfa';
const SFA = 'https://refeds.org/profile/sfa';
const PASSWORD = 'test-password';

const ACCOUNTS = {
  alice: { amr: ['pwd', 'otp'], acr: MFA, groups: ['physics'], otp: '123456' },
  bob: { amr: ['mfa'], acr: MFA, groups: ['chemistry'] },
  carol: { amr: ['pwd'], acr: SFA, groups: ['physics'] },
  dave: { amr: ['pwd', 'hwk'], acr: MFA, groups: ['hub-admins'] },
};

// ------------------------------------------------------------------ step-up (hubgate issue 12)
// With --step-up-mfa the provider adds the second factor only when asked, as many real
// providers do: a login whose authorization request does not list the MFA profile in
// `acr_values` is password-only (acr SFA, amr ["pwd"]); when asked, the account's own MFA
// claims are issued — except for accounts without a second factor (carol), which stay
// password-only and so exercise a provider that cannot satisfy the request. Overrides typed
// into the login form still win. Without the flag nothing here changes any claim.
//
// Also: erin, a member of 300 project groups (hubgate's "many groups" tests), and physics.
ACCOUNTS.erin = {
  amr: ['pwd', 'otp'],
  acr: MFA,
  groups: [
    ...Array.from({ length: 300 }, (_, i) => `project-hpc-${String(i).padStart(5, '0')}-climate-modelling`),
    'physics',
  ],
};

function stepUpClaims(details, form, claims) {
  if (!opts.stepUpMfa) return claims;
  const asked = String(details.params.acr_values || '').split(' ').includes(MFA);
  const out = asked ? claims : { amr: ['pwd'], acr: SFA };
  if (form.get('amr')) out.amr = claims.amr;
  if (form.get('acr')) out.acr = claims.acr;
  return out;
}
// ------------------------------------------------------------------ end of step-up

function accountClaims(id) {
  const a = ACCOUNTS[id];
  return {
    sub: id,
    preferred_username: id,
    name: id[0].toUpperCase() + id.slice(1),
    email: `${id}@example.org`,
    email_verified: true,
    groups: a.groups,
  };
}

// ------------------------------------------------------------------ shared store
// One module-level Map for every Provider instance (survives SIGHUP reloads).
const store = new Map(); // key -> { payload, expiresAt }
const grantIndex = new Map(); // grantId -> Set(key)

function k(model, id) { return `${model}:${id}`; }
function live(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.expiresAt && e.expiresAt < Date.now()) { store.delete(key); return undefined; }
  return e.payload;
}

class SharedAdapter {
  constructor(name) { this.name = name; }

  async upsert(id, payload, expiresIn) {
    const key = k(this.name, id);
    store.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
    if (payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (payload.uid) store.set(k(`${this.name}:uid`, payload.uid), { payload: id, expiresAt: 0 });
    if (payload.userCode) store.set(k(`${this.name}:userCode`, payload.userCode), { payload: id, expiresAt: 0 });
  }

  async find(id) { return live(k(this.name, id)); }

  async findByUid(uid) {
    const id = live(k(`${this.name}:uid`, uid));
    return id ? this.find(id) : undefined;
  }

  async findByUserCode(userCode) {
    const id = live(k(`${this.name}:userCode`, userCode));
    return id ? this.find(id) : undefined;
  }

  async consume(id) {
    const p = live(k(this.name, id));
    if (p) p.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(k(this.name, id)); }

  async revokeByGrantId(grantId) {
    const keys = grantIndex.get(grantId);
    if (keys) for (const key of keys) store.delete(key);
    grantIndex.delete(grantId);
  }
}

// ------------------------------------------------------------------ logout
// With --logout-origin ORIGIN (hubgate's public origin, e.g. http://127.0.0.1:8000):
//   * RP-Initiated Logout 1.0: the end_session_endpoint accepts the `hubgate` clients'
//     post_logout_redirect_uri ORIGIN/_hubgate/logged-out. The confirmation page is a bare
//     form (tests post it: xsrf + logout=yes to /session/end/confirm).
//   * Back-Channel Logout 1.0: the `hubgate` clients get backchannel_logout_uri
//     ORIGIN/_hubgate/backchannel-logout with backchannel_logout_session_required (ID tokens
//     carry `sid`); each logout token post prints `backchannel <status|error>` on stdout.
// Without it, neither is registered (end_session still exists but no client may use it).
function logoutClientMetadata() {
  if (!opts.logoutOrigin) return {};
  return {
    post_logout_redirect_uris: [`${opts.logoutOrigin}/_hubgate/logged-out`],
    backchannel_logout_uri: `${opts.logoutOrigin}/_hubgate/backchannel-logout`,
    backchannel_logout_session_required: true,
  };
}

function logoutFeatures() {
  return {
    backchannelLogout: { enabled: Boolean(opts.logoutOrigin) },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = `<!doctype html><html><head><title>Test IdP logout</title></head><body>
${form}<button type="submit" form="op.logoutForm" value="yes" name="logout">Sign out</button>
</body></html>`;
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = '<!doctype html><html><body><p>signed out at the test IdP</p></body></html>';
      },
    },
  };
}

// oidc-provider refuses outgoing requests to special-use addresses (SSRF protection), and
// hubgate listens on 127.0.0.1 in tests: with --logout-origin its logout-token posts skip
// that check. Only the back-channel logout post uses this fetch here.
function logoutConfiguration() {
  if (!opts.logoutOrigin) return {};
  return {
    fetch(url, options) {
      const { dispatcher: _ssrfCheck, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
  };
}

function logoutEvents(provider) {
  provider.on('backchannel.success', () => console.log('backchannel 200'));
  provider.on('backchannel.error', (_ctx, err) => console.log(`backchannel error ${err.message}`));
}

// ------------------------------------------------------------------ provider
function readKeys() {
  const jwks = JSON.parse(fs.readFileSync(opts.jwks, 'utf8'));
  if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new Error(`${opts.jwks}: no keys`);
  }
  return jwks;
}

function buildProvider(issuer) {
  const jwks = readKeys();
  const redirectUris = opts.redirectUris.length ? opts.redirectUris : ['http://127.0.0.1:9/unused'];
  const clients = [
    {
      client_id: 'hubgate',
      token_endpoint_auth_method: 'none',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      id_token_signed_response_alg: opts.idTokenAlg,
      ...logoutClientMetadata(),
    },
    {
      client_id: 'test-cli',
      token_endpoint_auth_method: 'none',
      redirect_uris: [TEST_CLI_REDIRECT],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      id_token_signed_response_alg: opts.idTokenAlg,
    },
  ];
  if (opts.clientSecret) {
    clients.push({
      client_id: 'hubgate-confidential',
      client_secret: opts.clientSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      id_token_signed_response_alg: opts.idTokenAlg,
      ...logoutClientMetadata(),
    });
  }

  const provider = new Provider(issuer, {
    adapter: SharedAdapter,
    ...logoutConfiguration(),
    clients,
    jwks,
    pkce: { required: () => true },
    acrValues: [MFA, SFA],
    claims: {
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      profile: ['name', 'preferred_username', 'groups'],
      email: ['email', 'email_verified'],
      amr: null,
      acr: null,
      auth_time: null,
      groups: null,
    },
    conformIdTokenClaims: false,
    cookies: { keys: ['hubgate-test-provider-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:jupyterhub',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'hub',
          audience: 'jupyterhub',
          accessTokenTTL: opts.atTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: opts.atAlg } },
        }),
      },
      ...logoutFeatures(),
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(_ctx, sub) {
      if (!ACCOUNTS[sub]) return undefined;
      return { accountId: sub, async claims() { return accountClaims(sub); } };
    },
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile offline_access');
      grant.addOIDCClaims(['preferred_username', 'email', 'groups', 'acr', 'amr', 'auth_time']);
      grant.addResourceScope('urn:jupyterhub', 'hub');
      await grant.save();
      return grant;
    },
    async extraTokenClaims(ctx, token) {
      const src = ctx.oidc.entities.AuthorizationCode || ctx.oidc.entities.RefreshToken;
      const out = {};
      if (src) {
        if (src.acr) out.acr = src.acr;
        if (src.amr) out.amr = src.amr;
        if (src.authTime) out.auth_time = src.authTime;
      }
      if (ACCOUNTS[token.accountId]) {
        const c = accountClaims(token.accountId);
        out.preferred_username = c.preferred_username;
        out.email = c.email;
        out.groups = c.groups;
      }
      return out;
    },
    ttl: {
      AccessToken: opts.atTtl,
      IdToken: 300,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
      RefreshToken: 3600,
    },
    renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  logoutEvents(provider);
  return { provider, handler: provider.callback(), keyCount: jwks.keys.length };
}

// ------------------------------------------------------------------ interactions
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let n = 0;
    req.on('data', (c) => {
      n += c.length;
      if (n > 65536) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function interaction(current, req, res, uid, action) {
  const { provider } = current;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    send(res, 400, 'application/json', JSON.stringify({ error: 'interaction_not_found', detail: String(e.message) }));
    return;
  }
  if (details.uid !== uid) {
    send(res, 400, 'application/json', JSON.stringify({ error: 'interaction_mismatch' }));
    return;
  }
  if (req.method === 'GET' && !action) {
    send(res, 200, 'text/html; charset=utf-8', `<!doctype html>
<html><head><title>Test IdP login</title></head><body>
<h1>Test IdP (prompt: ${esc(details.prompt.name)})</h1>
<form method="post" action="/interaction/${esc(uid)}/login">
<input name="login" placeholder="user"> <input name="password" type="password">
<input name="otp" placeholder="otp">
<input name="amr" placeholder="amr override, comma list">
<input name="acr" placeholder="acr override">
<input name="auth_time" placeholder="auth_time override (epoch seconds)">
<button type="submit">Sign in</button>
</form></body></html>`);
    return;
  }
  if (req.method === 'POST' && action === 'login') {
    const f = new URLSearchParams(await readBody(req));
    const id = f.get('login') || '';
    const acct = ACCOUNTS[id];
    if (!acct || f.get('password') !== PASSWORD || (acct.otp && f.get('otp') !== acct.otp)) {
      send(res, 401, 'text/html; charset=utf-8', '<p>invalid credentials</p>');
      return;
    }
    const { amr, acr } = stepUpClaims(details, f, {
      amr: f.get('amr') ? f.get('amr').split(',').map((s) => s.trim()).filter(Boolean) : acct.amr,
      acr: f.get('acr') || acct.acr,
    });
    const ts = f.get('auth_time') ? Number(f.get('auth_time')) : Math.floor(Date.now() / 1000);
    await provider.interactionFinished(req, res, {
      login: { accountId: id, amr, acr, ts, remember: true },
      consent: {},
    }, { mergeWithLastSubmission: false });
    return;
  }
  send(res, 405, 'application/json', JSON.stringify({ error: 'method_not_allowed' }));
}

// ------------------------------------------------------------------ server
let current = null;

const server = http.createServer((req, res) => {
  const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?\/?(?:\?.*)?$/.exec(req.url);
  if (m) {
    interaction(current, req, res, m[1], m[2]).catch((e) => {
      console.error('interaction error', e);
      if (!res.headersSent) send(res, 500, 'application/json', JSON.stringify({ error: 'server_error' }));
    });
    return;
  }
  current.handler(req, res);
});

server.listen(opts.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  current = buildProvider(issuer);
  process.on('SIGHUP', () => {
    try {
      current = buildProvider(issuer);
      console.log(`reloaded ${current.keyCount} keys`);
    } catch (e) {
      console.log(`reload failed: ${e.message}`);
    }
  });
  console.log(`listening ${issuer}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
