// The company IdP of the people sign-in tests: the real npm `oidc-provider` (OpenID Certified), pinned in
// scripts/install-test-tools.sh, on loopback port 0, with test users and groups.
//
//   node company_idp.mjs <node_modules dir>
//
// Environment:
//   IDP_CLIENTS  JSON array of oidc-provider client metadata (client_id, client_secret, redirect_uris, …)
//
// Prints one JSON line on stdout once listening: {"issuer": "http://127.0.0.1:PORT"}. Logs go to stderr.
// Sign-in uses oidc-provider's own login and consent pages (devInteractions): the login name picks the
// test user below; the password is not checked (these are test users on loopback).
import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.argv[2];
if (!modules) {
  console.error('usage: node company_idp.mjs <node_modules dir>');
  process.exit(64);
}
const { default: Provider } = await import(pathToFileURL(path.join(modules, 'oidc-provider', 'lib', 'index.js')));

// Test users: login name → claims. Groups and a tenant id as Entra and Okta put them in ID tokens.
const USERS = {
  alice: { email: 'alice@example.com', email_verified: true, name: 'Alice Example', groups: ['eng', 'codex-users'], tid: 'tenant-1' },
  bob: { email: 'bob@example.com', email_verified: true, name: 'Bob Example', groups: ['sales'], tid: 'tenant-1' },
  carol: { email: 'carol@example.com', email_verified: true, name: 'Carol Example', groups: ['eng', 'contractors'], tid: 'tenant-2' },
};

const clients = JSON.parse(process.env.IDP_CLIENTS || '[]');
const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients,
  // Claims in the ID token itself (Entra, Okta and Google do so for the scopes asked), not only at userinfo.
  conformIdTokenClaims: false,
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups', 'tid'],
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['tollgate-test-idp-cookie-key'] },
  ttl: { IdToken: 3600, AccessToken: 600, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600 },
  async findAccount(ctx, sub) {
    const user = USERS[sub];
    if (!user) return undefined;
    return { accountId: sub, async claims() { return { sub, ...user }; } };
  },
});
provider.on('server_error', (ctx, err) => console.error('idp server_error', err));
provider.on('grant.error', (ctx, err) => console.error('idp grant.error', err.message, err.error_description || ''));
provider.on('authorization.error', (ctx, err) => console.error('idp authorization.error', err.message, err.error_description || ''));
server.on('request', provider.callback());
process.stdout.write(JSON.stringify({ issuer }) + '\n');
// stdout carries only that line (the test may stop reading it); the provider's notices go to stderr,
// so a late notice cannot die on a closed pipe (EPIPE).
console.log = console.error;
console.info = console.error;
console.warn = console.error;
