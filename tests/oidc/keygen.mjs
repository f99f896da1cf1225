// TEST-ONLY key generator for hubgate's authentication tests.
//
// Usage: node keygen.mjs KID:ALG [KID:ALG ...]     (ALG: RS256 | PS256 | ES256 | ES384 | EdDSA)
// Prints a JSON array, one object per key:
//   { kid, alg, private_jwk, public_jwk,
//     private_der   base64 DER the Rust `jsonwebtoken` crate signs with
//                   (RSA: PKCS#1, EC/Ed25519: PKCS#8),
//     public_pem_spki, public_pem_pkcs1 (RSA only), public_der_spki, public_der_pkcs1 (RSA only)
//                   for algorithm-confusion tests (HMAC keyed with public key bytes) }
import crypto from 'node:crypto';

function gen(alg) {
  switch (alg) {
    case 'RS256': case 'PS256': return crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    case 'ES256': return crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    case 'ES384': return crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
    case 'EdDSA': return crypto.generateKeyPairSync('ed25519');
    default: throw new Error(`unsupported alg ${alg}`);
  }
}

const out = process.argv.slice(2).map((spec) => {
  const [kid, alg] = spec.split(':');
  const { privateKey, publicKey } = gen(alg);
  const rsa = alg === 'RS256' || alg === 'PS256';
  const meta = { kid, use: 'sig', alg };
  return {
    kid,
    alg,
    private_jwk: { ...privateKey.export({ format: 'jwk' }), ...meta },
    public_jwk: { ...publicKey.export({ format: 'jwk' }), ...meta },
    private_der: privateKey.export({ format: 'der', type: rsa ? 'pkcs1' : 'pkcs8' }).toString('base64'),
    public_pem_spki: publicKey.export({ format: 'pem', type: 'spki' }),
    public_der_spki: publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
    ...(rsa ? {
      public_pem_pkcs1: publicKey.export({ format: 'pem', type: 'pkcs1' }),
      public_der_pkcs1: publicKey.export({ format: 'der', type: 'pkcs1' }).toString('base64'),
    } : {}),
  };
});
process.stdout.write(JSON.stringify(out));
