//! JWT at the upgrade (`--rows jwt`, opt-in): `ws-proxy` in frame mode verifying a token on
//! every handshake, one target per algorithm, for the handshake row beside plain `ws-proxy`.
//! The keys are the test suite's (`tests/data/`); the client sends `Authorization: Bearer`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

const HMAC_SECRET: &[u8] = b"the bench's HMAC secret, 32 bytes or more";
const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt_rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/data/jwt_rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt_ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../tests/data/jwt_ec_public.pem");

/// The algorithm a JWT target verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    pub(crate) const ALL: [Alg; 3] = [Alg::Hs256, Alg::Rs256, Alg::Es256];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "ws-proxy jwt hs256",
            Alg::Rs256 => "ws-proxy jwt rs256",
            Alg::Es256 => "ws-proxy jwt es256",
        }
    }

    /// `ws-proxy`'s flags for this algorithm, its key written into `dir`.
    pub(crate) fn args(self, dir: &Path) -> Result<Vec<String>, String> {
        let (flag, file, key): (&str, &str, &[u8]) = match self {
            Alg::Hs256 => ("--jwt-hmac-secret-file", "secret", HMAC_SECRET),
            Alg::Rs256 => ("--jwt-public-key-file", "rsa.pem", RSA_PUBLIC),
            Alg::Es256 => ("--jwt-public-key-file", "ec.pem", EC_PUBLIC),
        };
        let path = dir.join(file);
        std::fs::write(&path, key).map_err(|e| e.to_string())?;
        Ok(vec![
            flag.to_owned(),
            path.display().to_string(),
            "--jwt-audience".to_owned(),
            "bench".to_owned(),
        ])
    }

    /// A token valid for a day, as an identity provider would sign it.
    pub(crate) fn token(self) -> Result<String, String> {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs()
            + 86_400;
        let claims =
            serde_json::json!({ "sub": "bench-user", "aud": "bench", "exp": exp, "jti": "t-1" });
        let (alg, key) = match self {
            Alg::Hs256 => (Algorithm::HS256, EncodingKey::from_secret(HMAC_SECRET)),
            Alg::Rs256 => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(RSA_PRIVATE).map_err(|e| e.to_string())?,
            ),
            Alg::Es256 => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(EC_PRIVATE).map_err(|e| e.to_string())?,
            ),
        };
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(|e| e.to_string())
    }
}
