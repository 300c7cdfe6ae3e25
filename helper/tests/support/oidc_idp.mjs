// A company identity provider for the helper's sign-in tests: the real npm `oidc-provider` (pinned in
// scripts/install-test-tools.sh), on 127.0.0.1 at a port the system picks, as a plain OAuth 2.1
// authorization server for the helper's public client: PKCE required (S256 only), loopback redirects on
// any port (RFC 8252 §7.3), refresh tokens that rotate on every use (a replayed one revokes the grant),
// the device grant, revocation, and resource indicators (the access token is a JWT for the resource).
//
//   node oidc_idp.mjs            (env: TOLLGATE_TEST_TOOLS, IDP_ACCESS_TTL seconds, IDP_DEVICE_INTERVAL)
//
// Prints one JSON line {"issuer": …} on stdout when it listens; exits when stdin closes (the test died).
import http from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const tools = process.env.TOLLGATE_TEST_TOOLS;
const { default: Provider } = await import(
  pathToFileURL(join(tools, 'idp/node_modules/oidc-provider/lib/index.js')).href
);
const accessTtl = Number(process.env.IDP_ACCESS_TTL || 3600);
const deviceInterval = Number(process.env.IDP_DEVICE_INTERVAL || 1);

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const people = {
  alice: { email: 'alice@example.com', groups: ['eng'] },
  bob: { email: 'bob@example.com', groups: ['sales'] },
};
const publicClient = (id) => ({
  client_id: id,
  client_name: id,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  // Native loopback redirects match on any port (RFC 8252 §7.3).
  redirect_uris: ['http://127.0.0.1/callback'],
  grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
});

const provider = new Provider(issuer, {
  clients: [publicClient('tollgate-token'), publicClient('codex')],
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'models'],
  // Who signed in is in the ID token, as company IdPs (Entra ID, Okta) put it there.
  claims: { openid: ['sub', 'email', 'groups'] },
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: people[id]?.email ?? `${id}@example.com`, groups: people[id]?.groups ?? [] }),
  }),
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => issuer,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'models',
        audience: resource,
        accessTokenTTL: accessTtl,
        accessTokenFormat: 'jwt',
      }),
    },
  },
  issueRefreshToken: async () => true,
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: 86400,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 3600,
  },
  cookies: { keys: ['helper-tests-only-cookie-key'] },
});
// RFC 8628 §3.2 lets the server set the polling interval: short, so the tests poll quickly.
provider.on('device_authorization.success', (ctx, body) => {
  body.interval = deviceInterval;
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
// stdout carries only that line (the test may stop reading it); the provider's notices go to stderr.
console.log = console.error;
console.info = console.error;
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
