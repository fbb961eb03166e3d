// The caller's identity provider for synapse-gate's end-to-end tests: the certified `oidc-provider`
// served over HTTPS on loopback, issuing JWT access tokens by the client-credentials grant.
//
// Everything secret is made at start-up or handed in by the test: the signing keys are generated
// here and never written anywhere, the TLS certificate comes from the test's own CA, and the
// client secrets come from the test.
//
// Environment:
//   IDP_TLS_CERT, IDP_TLS_KEY  PEM files of the server certificate (required)
//   IDP_HOST                   address to bind and name in the issuer (default 127.0.0.1)
//   IDP_PORT                   port (default 0: any free port)
//   IDP_CLIENTS                JSON list of { client_id, client_secret, groups?, token_endpoint_auth_method? }
//   IDP_RESOURCES              JSON list of resource indicators that may get tokens
//                              (default ["api://synapse-gate", "api://other-service"])
//
// Prints one line `READY <issuer>` on stdout when listening. Exits on SIGTERM, SIGINT, or when
// stdin closes (so a test that dies without cleaning up does not leave the server behind).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import Provider, { errors } from 'oidc-provider';

const RESOURCE_SCOPE = 'synapse';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} must be set`);
  }
  return value;
}

function jsonEnv(name, fallback) {
  const value = process.env[name];
  return value ? JSON.parse(value) : fallback;
}

/** A fresh private signing key as a JWK, named by `kid`. */
function signingKey(kid, type, options, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg };
}

const host = process.env.IDP_HOST || '127.0.0.1';
const port = Number(process.env.IDP_PORT || 0);
const clients = jsonEnv('IDP_CLIENTS', []);
const resources = new Set(jsonEnv('IDP_RESOURCES', ['api://synapse-gate', 'api://other-service']));
const groupsByClient = new Map(clients.map((c) => [c.client_id, c.groups ?? []]));

const server = createServer({
  cert: readFileSync(required('IDP_TLS_CERT')),
  key: readFileSync(required('IDP_TLS_KEY')),
});

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, host, resolve);
});

const authority = host.includes(':') ? `[${host}]` : host;
const issuer = `https://${authority}:${server.address().port}`;
const suffix = randomBytes(4).toString('hex');

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
  })),
  jwks: {
    keys: [
      signingKey(`rsa-${suffix}`, 'rsa', { modulusLength: 2048 }, 'RS256'),
      signingKey(`ec-${suffix}`, 'ec', { namedCurve: 'P-256' }, 'ES256'),
    ],
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo(ctx, resourceIndicator) {
        if (!resources.has(resourceIndicator)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: RESOURCE_SCOPE,
          audience: resourceIndicator,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims(ctx, token) {
    const groups = groupsByClient.get(token.clientId);
    return groups && groups.length > 0 ? { groups } : undefined;
  },
});

provider.on('server_error', (ctx, error) => {
  process.stderr.write(`oidc-provider server_error: ${error.stack ?? error}\n`);
});
provider.on('grant.error', (ctx, error) => {
  process.stderr.write(`oidc-provider grant.error: ${error.message} ${error.error_description ?? ''}\n`);
});

server.removeAllListeners('error');
server.on('error', (error) => process.stderr.write(`https server error: ${error}\n`));
server.on('request', provider.callback());

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();

process.stdout.write(`READY ${issuer}\n`);
