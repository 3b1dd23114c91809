// A real OpenID Connect provider (panva/oidc-provider) for the Gatehouse SSO tests.
//
// Configured from the environment:
//   OIDC_PORT            port to listen on (127.0.0.1)
//   OIDC_ISSUER          the issuer URL, e.g. http://127.0.0.1:PORT
//   OIDC_CLIENT_ID       the one registered client (confidential, client_secret_basic, PKCE required)
//   OIDC_CLIENT_SECRET
//   OIDC_REDIRECT_URIS   comma-separated redirect URIs registered for that client
//   OIDC_ACCOUNTS        JSON: {"alice": {"email": "...", "groups": ["..."]}, ...}
//
// Interactions are automatic: the login prompt signs in the account named by the authorization request's
// `login_hint` (unknown or missing: the request ends with access_denied); the consent prompt grants what
// was asked. No HTML forms, no dev interactions.
//
// Test-only control endpoints:
//   PUT /_test/accounts/<name>  body {"email"?, "preferred_username"?, "groups"?}: create or change an account
//   POST /_test/rotate          publish a new signing key in front of the current ones (the provider signs
//                               with the first RS256 key), as an operator rotating keys would
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.mjs: ${name} is required`);
    process.exit(2);
  }
  return value;
};

const port = Number(env('OIDC_PORT'));
const issuer = env('OIDC_ISSUER');
const client = {
  client_id: env('OIDC_CLIENT_ID'),
  client_secret: env('OIDC_CLIENT_SECRET'),
  redirect_uris: env('OIDC_REDIRECT_URIS').split(','),
  response_types: ['code'],
  grant_types: ['authorization_code'],
  token_endpoint_auth_method: 'client_secret_basic',
};
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || '{}');

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

async function findAccount(_ctx, id) {
  const account = accounts[id];
  if (!account) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        preferred_username: account.preferred_username ?? id,
        name: account.name ?? id,
        email: account.email ?? `${id}@example.test`,
        email_verified: true,
        groups: account.groups ?? [],
      };
    },
  };
}

function makeProvider(keys) {
  const provider = new Provider(issuer, {
    clients: [client],
    jwks: { keys },
    findAccount,
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'profile', 'email', 'groups'],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['gatehouse-sso-test-cookie-key'] },
  });
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));
  return provider;
}

async function interact(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    const who = params.login_hint;
    if (!who || !accounts[who]) {
      await provider.interactionFinished(
        req,
        res,
        { error: 'access_denied', error_description: `no test account named ${JSON.stringify(who ?? null)}` },
        { mergeWithLastSubmission: false },
      );
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: who } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  res.statusCode = 501;
  res.end(`unsupported prompt ${prompt.name}`);
}

let keys = [signingKey()];
let provider = makeProvider(keys);
let handle = provider.callback();

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.method === 'PUT' && req.url.startsWith('/_test/accounts/')) {
      const name = decodeURIComponent(req.url.slice('/_test/accounts/'.length));
      accounts[name] = await readJson(req);
      res.statusCode = 204;
      res.end();
      return;
    }
    if (req.method === 'POST' && req.url === '/_test/rotate') {
      keys = [signingKey(), ...keys];
      provider = makeProvider(keys);
      handle = provider.callback();
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ kid: keys[0].kid, kids: keys.map((k) => k.kid) }));
      return;
    }
    if (req.url.startsWith('/interaction/')) {
      await interact(provider, req, res);
      return;
    }
    handle(req, res);
  } catch (error) {
    console.error(error);
    res.statusCode = 500;
    res.end(String(error));
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
