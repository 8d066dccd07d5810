// A local OpenID provider for the control plane's SSO tests: the certified `oidc-provider` package,
// bound to 127.0.0.1 on a free port, with a freshly generated signing key and the development
// login/consent screens (any login name signs in; the accounts below give it its claims).
//
// Configuration is one JSON object in OIDC_CONFIG:
//   {"clients": [{client_id, client_secret, redirect_uris}], "accounts": {"<login>": {claims...}}}
// The login name typed on the development login screen is the account's `sub`.
// When listening it prints one line of JSON: {"issuer": "http://127.0.0.1:PORT"}.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(process.env.OIDC_CONFIG || '{}');
const accounts = config.accounts || {};

function claimsFor(login) {
  const known = accounts[login] || {};
  return { email: login, email_verified: true, ...known, sub: login };
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `k-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: (config.clients || []).map((client) => ({
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...client,
    })),
    jwks: { keys: [signingKey()] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    // PKCE for confidential clients too; the relying party must send an S256 challenge.
    pkce: { required: () => true },
    // Put the scope-derived claims (email, groups) into the ID token, as many providers do.
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'groups'],
    },
    features: { devInteractions: { enabled: true } },
    async findAccount(ctx, id) {
      const claims = claimsFor(id);
      return { accountId: id, async claims() { return claims; } };
    },
  });
  provider.on('server_error', (ctx, error) => console.error('server_error', error));
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
