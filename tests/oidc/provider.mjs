// A real OpenID Provider for the access-control tests: oidc-provider on 127.0.0.1, issuing JWT
// access tokens through the client-credentials grant, with roles and the device claim.
// Environment: PORT, AUDIENCE, KEYS (a file holding the private JWKS, signing key first).
import { readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT);
const audience = process.env.AUDIENCE;
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(readFileSync(process.env.KEYS, 'utf8'));

// What each client's tokens carry; the tests read the same table through `clients.json`.
const clients = JSON.parse(readFileSync(new URL('./clients.json', import.meta.url), 'utf8'));

const provider = new Provider(issuer, {
  jwks,
  cookies: { keys: ['quart-iot-tests-only'] },
  ttl: { ClientCredentials: 600 },
  // Machines use the client-credentials grant; `spa` logs a person in (authorization code),
  // for the ID token an app receives beside its access token.
  clients: clients.map(({ client_id, client_secret, ...rest }) => ({
    client_id,
    client_secret,
    grant_types: rest.grant_types ?? ['client_credentials'],
    redirect_uris: rest.redirect_uris ?? [],
    response_types: rest.response_types ?? [],
  })),
  // Whoever logs in is a writer, and the ID token carries the roles too (as Authentik's do
  // with "Include claims in id_token"): an ID token that would pass for an access token.
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, realm_access: { roles: ['iot-config-writer'] } }),
  }),
  claims: { openid: ['sub', 'realm_access'] },
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true }, // its login form takes any name: tests only
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== audience) throw new errors.InvalidTarget();
        return {
          audience,
          scope: 'iot-config-reader iot-config-writer',
          accessTokenFormat: 'jwt',
          // A client may ask for short-lived tokens (`access_token_ttl`, seconds).
          accessTokenTTL:
            clients.find((c) => c.client_id === ctx.oidc.client?.clientId)?.access_token_ttl ?? 600,
          jwt: { sign: { alg: jwks.keys[0].alg } },
        };
      },
    },
  },
  extraTokenClaims: (ctx, token) => {
    const client = clients.find((c) => c.client_id === token.clientId);
    return client ? client.claims : undefined;
  },
});

provider.on('server_error', (ctx, error) => console.error('server_error', error));
provider.on('grant.error', (ctx, error) => console.error('grant.error', error.message, error.error_description));

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
