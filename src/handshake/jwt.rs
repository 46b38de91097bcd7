//! The built-in identity check: a JWT from the upgrade request, verified (signature, algorithm
//! allowlist, `exp`, `nbf`, `iss`, `aud`), turned into the session's [`Identity`].

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::error::AuthFailure;
use crate::handshake::identify::{Identify, IdentityFuture};
use crate::handshake::request::percent_decode;
use crate::handshake::route::Refusal;
use crate::identity::Identity;
use crate::upstream::balance::cookie_value;

/// Where the token is looked for, in the order given
/// ([`JwtAuthBuilder::token_sources`]). Browsers cannot set headers on a WebSocket: their
/// tokens come in a cookie or the query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`; removed from the upstream request unless
    /// [`forward_token`](JwtAuthBuilder::forward_token) is set.
    Bearer,
    /// A cookie of this name (the `Cookie` header goes upstream as it came).
    Cookie(String),
    /// A query parameter of this name: always removed from the upstream request's target and
    /// shown as `REDACTED` in every log line, valid or not.
    Query(String),
}

/// The keys tokens are verified with: one HMAC secret, or public keys (RSA, ECDSA P-256 and
/// P-384, Ed25519) from PEM or a JWKS. Never both: an HMAC token verified with a public key
/// as its secret is the classic algorithm confusion.
#[derive(Clone)]
pub struct JwtKeys {
    keys: Vec<Key>,
    hmac: bool,
}

#[derive(Clone)]
struct Key {
    id: Option<String>,
    /// The algorithms this key verifies.
    fits: &'static [Algorithm],
    key: DecodingKey,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("hmac", &self.hmac)
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| k.id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

/// A JWT configuration that cannot work: which part, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// The HMAC secret is shorter than 32 bytes (RFC 7518 §3.2: at least the hash's size).
    SecretTooShort(usize),
    /// No public key could be read from the PEM text.
    Pem(String),
    /// The JWKS is not JSON of the form `{"keys": [...]}`, or holds no signature key the proxy
    /// can use.
    Jwks(String),
    /// An algorithm name that is not one of HS256..HS512, RS256..RS512, PS256..PS512, ES256,
    /// ES384, EdDSA (`none` never is).
    UnknownAlgorithm(String),
    /// An allowed algorithm that no key can verify (an HMAC algorithm with public keys, or
    /// the reverse).
    AlgorithmWithoutKey(String),
    /// The allowlist is empty.
    NoAlgorithms,
}

impl fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecretTooShort(n) => write!(
                f,
                "the HMAC secret is {n} bytes; at least 32 are needed"
            ),
            Self::Pem(why) => write!(f, "no public key in the PEM text: {why}"),
            Self::Jwks(why) => write!(f, "unusable JWKS: {why}"),
            Self::UnknownAlgorithm(name) => write!(
                f,
                "unknown JWT algorithm {name:?} (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
            ),
            Self::AlgorithmWithoutKey(name) => write!(
                f,
                "algorithm {name} cannot be verified with the keys given (HMAC algorithms need a secret, the others public keys)"
            ),
            Self::NoAlgorithms => f.write_str("the algorithm allowlist is empty"),
        }
    }
}

impl std::error::Error for JwtConfigError {}

impl JwtKeys {
    /// An HMAC secret (HS256, HS384, HS512), 32 bytes or more.
    pub fn hmac_secret(secret: &[u8]) -> Result<Self, JwtConfigError> {
        if secret.len() < 32 {
            return Err(JwtConfigError::SecretTooShort(secret.len()));
        }
        Ok(Self {
            keys: vec![Key {
                id: None,
                fits: HMAC,
                key: DecodingKey::from_secret(secret),
            }],
            hmac: true,
        })
    }

    /// Public keys in PEM (`PUBLIC KEY`, `RSA PUBLIC KEY`), one or more (for rotation).
    pub fn from_pem(pem: &[u8]) -> Result<Self, JwtConfigError> {
        let text = std::str::from_utf8(pem).map_err(|_| JwtConfigError::Pem("not UTF-8".into()))?;
        let mut keys = Vec::new();
        for block in text.split("-----BEGIN ").skip(1) {
            let block = format!("-----BEGIN {block}");
            let bytes = block.as_bytes();
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
                (RSA, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
                (EC, k)
            } else if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
                (ED, k)
            } else {
                let label = block.lines().next().unwrap_or_default().to_owned();
                return Err(JwtConfigError::Pem(format!(
                    "{label} is not an RSA, EC or Ed25519 public key"
                )));
            };
            keys.push(Key {
                id: None,
                fits: key.0,
                key: key.1,
            });
        }
        if keys.is_empty() {
            return Err(JwtConfigError::Pem("no PEM block".into()));
        }
        Ok(Self { keys, hmac: false })
    }

    /// A JSON Web Key Set (`{"keys": [...]}`), as identity providers publish it. A token
    /// that names a `kid` is checked with that key only; one without, with each key of its
    /// algorithm's type. Keys for encryption (`"use": "enc"`, an `alg` that is not a
    /// signature's, `key_ops` without `verify`) are skipped; symmetric (`oct`) keys are
    /// refused.
    pub fn from_jwks(json: &[u8]) -> Result<Self, JwtConfigError> {
        let set: Value = serde_json::from_slice(json)
            .map_err(|e| JwtConfigError::Jwks(format!("not JSON: {e}")))?;
        let Some(list) = set.get("keys").and_then(Value::as_array) else {
            return Err(JwtConfigError::Jwks("no \"keys\" array".into()));
        };
        let mut keys = Vec::new();
        for (i, value) in list.iter().enumerate() {
            // Keys for encryption are skipped before they are parsed: their algorithms
            // (`ECDH-ES+A256KW`...) are not ones `jsonwebtoken` can read.
            let field = |name: &str| value.get(name).and_then(Value::as_str);
            let encrypts = field("use") == Some("enc")
                || field("alg").is_some_and(|a| Algorithm::from_str(a).is_err())
                || value
                    .get("key_ops")
                    .and_then(Value::as_array)
                    .is_some_and(|ops| !ops.iter().any(|op| op.as_str() == Some("verify")));
            if encrypts {
                continue;
            }
            let jwk: Jwk = serde_json::from_value(value.clone())
                .map_err(|e| JwtConfigError::Jwks(format!("key {i}: {e}")))?;
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let fits = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => RSA,
                AlgorithmParameters::EllipticCurve(_) => EC,
                AlgorithmParameters::OctetKeyPair(_) => ED,
                AlgorithmParameters::OctetKey(_) => {
                    return Err(JwtConfigError::Jwks(format!(
                        "key {i} is symmetric (oct); give an HMAC secret as a secret file"
                    )))
                }
            };
            // A key that names its algorithm verifies only that one; one that names an
            // encryption algorithm (`RSA-OAEP`, without `use`) is for encryption: skipped.
            let fits = match jwk.common.key_algorithm {
                Some(named_alg) => match named(named_alg) {
                    Some(alg) => fits
                        .iter()
                        .find(|a| **a == alg)
                        .map(std::slice::from_ref)
                        .ok_or_else(|| {
                            JwtConfigError::Jwks(format!("key {i}: its alg does not fit its type"))
                        })?,
                    None => continue,
                },
                None => fits,
            };
            let key = DecodingKey::from_jwk(&jwk)
                .map_err(|e| JwtConfigError::Jwks(format!("key {i}: {e}")))?;
            keys.push(Key {
                id: jwk.common.key_id.clone(),
                fits,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwtConfigError::Jwks("no signature key".into()));
        }
        Ok(Self { keys, hmac: false })
    }
}

/// The JWK `alg` as a signature algorithm, if it is one.
fn named(alg: KeyAlgorithm) -> Option<Algorithm> {
    Algorithm::from_str(&format!("{alg:?}")).ok()
}

/// Verifies a JWT on every upgrade ([`WsProxyLayer::identify`](crate::WsProxyLayer::identify)).
/// Made with [`JwtAuth::builder`].
///
/// - Missing token: **401** `token_missing`; a token that fails: **401** with its cause
///   (`token_invalid`, `token_algorithm`, `token_expired`, `token_not_yet_valid`,
///   `token_issuer`, `token_audience`, `token_claims`, `token_revoked`), before any dial,
///   with `WWW-Authenticate: Bearer`.
/// - `exp` is required and strict: a token is refused from `exp` on, and its session is
///   closed at `exp` (1008 "token expired"). The leeway applies to `nbf` only.
/// - The subject (claim `sub` unless set), tenant, tags and `jti` go into the session's
///   [`Identity`]; claims named in [`forward_claim`](JwtAuthBuilder::forward_claim) go
///   upstream as headers, and copies of those headers sent by the client are removed
///   whether or not a token was found.
///
/// ```
/// use std::time::Duration;
/// use axum_ws_proxy::jwt::{JwtAuth, JwtKeys, TokenSource};
/// use axum_ws_proxy::WsProxyLayer;
///
/// let keys = JwtKeys::hmac_secret(b"0123456789abcdef0123456789abcdef")?;
/// let auth = JwtAuth::builder(keys)
///     .algorithms(["HS256"])
///     .issuer("https://id.example.com")
///     .audience("chat")
///     .leeway(Duration::from_secs(5))
///     .token_sources([TokenSource::Bearer, TokenSource::Cookie("session".into()), TokenSource::Query("access_token".into())])
///     .tenant_claim("org")
///     .forward_claim("sub", "x-user-id".parse()?)
///     .build()?;
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).identify(auth);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct JwtAuth(Arc<Settings>);

#[derive(Debug)]
struct Settings {
    keys: JwtKeys,
    /// One validation per allowed algorithm (`jsonwebtoken` checks the key's family against
    /// the algorithms it is given).
    validations: Vec<(Algorithm, Validation)>,
    sources: Vec<TokenSource>,
    forward_token: bool,
    subject_claim: String,
    tenant_claim: Option<String>,
    tags_claim: Option<String>,
    forward: Vec<(String, HeaderName)>,
}

/// Builds a [`JwtAuth`]; [`build`](Self::build) checks that the settings fit together.
#[derive(Clone, Debug)]
#[must_use]
pub struct JwtAuthBuilder {
    keys: JwtKeys,
    algorithms: Option<Vec<String>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    sources: Vec<TokenSource>,
    forward_token: bool,
    subject_claim: String,
    tenant_claim: Option<String>,
    tags_claim: Option<String>,
    forward: Vec<(String, HeaderName)>,
}

impl JwtAuth {
    /// Settings for tokens verified with `keys`; defaults: the algorithms the keys fit
    /// (HS256 for a secret; RS256, ES256, ES384 or EdDSA for public keys, or each JWK's own
    /// `alg`), no `iss`/`aud` check, 5 s of leeway on `nbf`, the token from
    /// `Authorization: Bearer` only, the subject from `sub`.
    pub fn builder(keys: JwtKeys) -> JwtAuthBuilder {
        JwtAuthBuilder {
            keys,
            algorithms: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            sources: vec![TokenSource::Bearer],
            forward_token: false,
            subject_claim: "sub".into(),
            tenant_claim: None,
            tags_claim: None,
            forward: Vec::new(),
        }
    }
}

impl JwtAuthBuilder {
    /// The algorithms accepted, by name (`RS256`, `ES256`, `HS256`...). Tokens signed with
    /// any other are refused (`token_algorithm`); `none` is never accepted.
    pub fn algorithms<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.algorithms = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// The `iss` tokens must carry.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The `aud` tokens must carry (one of theirs, when they have several). Without it, a
    /// token that names an audience is refused (RFC 7519 §4.1.3).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Clock skew allowed on `nbf`. Default: 5 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Where the token is looked for, in order; the first found is the one checked.
    pub fn token_sources(mut self, sources: impl IntoIterator<Item = TokenSource>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Whether `Authorization: Bearer` goes upstream with the request. Default: no: every
    /// bearer `Authorization` header is removed (other schemes stay), and the upstream gets
    /// the verified claims it is given as headers instead.
    pub fn forward_token(mut self, forward: bool) -> Self {
        self.forward_token = forward;
        self
    }

    /// The claim whose string is the session's subject. Default: `sub`.
    pub fn subject_claim(mut self, claim: impl Into<String>) -> Self {
        self.subject_claim = claim.into();
        self
    }

    /// The claim whose string is the session's tenant.
    pub fn tenant_claim(mut self, claim: impl Into<String>) -> Self {
        self.tenant_claim = Some(claim.into());
        self
    }

    /// The claim whose strings are the session's tags: an array of strings, or one string of
    /// space-separated words (as OAuth's `scope`).
    pub fn tags_claim(mut self, claim: impl Into<String>) -> Self {
        self.tags_claim = Some(claim.into());
        self
    }

    /// Sends a verified claim upstream as `header` (strings as they are, numbers and booleans
    /// written out, arrays of strings joined with commas). The client's own `header` is
    /// always removed.
    pub fn forward_claim(mut self, claim: impl Into<String>, header: HeaderName) -> Self {
        self.forward.push((claim.into(), header));
        self
    }

    /// The check, once the settings fit together.
    pub fn build(self) -> Result<JwtAuth, JwtConfigError> {
        let algorithms: Vec<Algorithm> = match &self.algorithms {
            Some(names) => names
                .iter()
                .map(|n| {
                    Algorithm::from_str(n.trim())
                        .map_err(|_| JwtConfigError::UnknownAlgorithm(n.clone()))
                })
                .collect::<Result<_, _>>()?,
            None => defaults(&self.keys),
        };
        if algorithms.is_empty() {
            return Err(JwtConfigError::NoAlgorithms);
        }
        let mut validations = Vec::new();
        for alg in algorithms {
            if !self.keys.keys.iter().any(|k| k.fits.contains(&alg)) {
                return Err(JwtConfigError::AlgorithmWithoutKey(format!("{alg:?}")));
            }
            let mut v = Validation::new(alg);
            // `exp` is checked here, strictly (the session ends at it).
            v.validate_exp = false;
            v.validate_nbf = true;
            v.leeway = self.leeway.as_secs();
            // jsonwebtoken checks `iss` and `aud` only when the token has them: a claim the
            // proxy checks is required, so a token that leaves it out is refused.
            let mut required = HashSet::new();
            if let Some(iss) = &self.issuer {
                v.set_issuer(&[iss]);
                required.insert("iss".to_owned());
            }
            // Without an audience set, a token that names one is refused.
            if let Some(aud) = &self.audience {
                v.set_audience(&[aud]);
                required.insert("aud".to_owned());
            }
            v.required_spec_claims = required;
            if !validations.iter().any(|(a, _)| *a == alg) {
                validations.push((alg, v));
            }
        }
        Ok(JwtAuth(Arc::new(Settings {
            keys: self.keys,
            validations,
            sources: self.sources,
            forward_token: self.forward_token,
            subject_claim: self.subject_claim,
            tenant_claim: self.tenant_claim,
            tags_claim: self.tags_claim,
            forward: self.forward,
        })))
    }
}

/// The algorithms accepted when none are named: one per key type.
fn defaults(keys: &JwtKeys) -> Vec<Algorithm> {
    let mut out = Vec::new();
    for key in &keys.keys {
        let picks: &[Algorithm] = match key.fits {
            f if f == HMAC => &[Algorithm::HS256],
            f if f == RSA => &[Algorithm::RS256],
            f if f == EC => EC,
            other => other,
        };
        for alg in picks {
            if !out.contains(alg) {
                out.push(*alg);
            }
        }
    }
    out
}

impl Identify for JwtAuth {
    fn identify(&self, parts: &mut Parts) -> IdentityFuture {
        let found = self.check(parts).map_err(Refusal::unauthorized);
        Box::pin(std::future::ready(found))
    }

    fn secret_query_params(&self) -> Vec<String> {
        self.0
            .sources
            .iter()
            .filter_map(|s| match s {
                TokenSource::Query(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

impl JwtAuth {
    fn check(&self, parts: &mut Parts) -> Result<Option<Identity>, AuthFailure> {
        let settings = &*self.0;
        // Whatever the token: identity headers come from the proxy only.
        for (_, header) in &settings.forward {
            parts.headers.remove(header);
        }
        let token = settings.take_token(parts);
        // Whichever source the token came from (or none): no bearer header goes upstream.
        if !settings.forward_token {
            strip_bearer(parts);
        }
        let token = token.ok_or(AuthFailure::Missing)?;
        let claims = settings.verify(&token)?;
        settings.identity(&claims).map(Some)
    }
}

impl Settings {
    /// The first token found, taken out of what goes upstream where it must be.
    fn take_token(&self, parts: &mut Parts) -> Option<String> {
        // Every query source is stripped, even past the one the token came from.
        let mut from_query = None;
        for source in &self.sources {
            if let TokenSource::Query(name) = source {
                let taken = take_query_param(&mut parts.uri, name);
                if from_query.is_none() {
                    from_query = taken;
                }
            }
        }
        for source in &self.sources {
            let token = match source {
                TokenSource::Bearer => bearer(parts),
                TokenSource::Cookie(name) => cookie(parts, name),
                TokenSource::Query(_) => from_query.take(),
            };
            if token.is_some() {
                return token;
            }
        }
        None
    }

    fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| unknown_algorithm(token))?;
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg)
        else {
            return Err(AuthFailure::Algorithm);
        };
        let keys = self.keys.keys.iter().filter(|k| {
            k.fits.contains(alg)
                && match (&header.kid, &k.id) {
                    (Some(want), Some(id)) => want == id,
                    _ => true,
                }
        });
        let mut failure = AuthFailure::Invalid;
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    failure = cause(e.kind());
                    // Only a bad signature may mean another key: the rest is the token's.
                    if failure != AuthFailure::Invalid
                        || !matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature)
                    {
                        return Err(failure);
                    }
                }
            }
        }
        Err(failure)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthFailure> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthFailure::Claims)?;
        // Past what a clock can hold: not a time this proxy can act on.
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .ok_or(AuthFailure::Claims)?;
        if expires <= SystemTime::now() {
            return Err(AuthFailure::Expired);
        }
        let subject = claims
            .get(&self.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthFailure::Claims)?;
        let mut identity = Identity::new(subject).expires_at(expires);
        if let Some(tenant) = self
            .tenant_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
        {
            identity = identity.tenant(tenant);
        }
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            identity = identity.token_id(jti);
        }
        match self.tags_claim.as_ref().and_then(|c| claims.get(c)) {
            Some(Value::String(words)) => {
                for tag in words.split_ascii_whitespace() {
                    identity = identity.tag(tag);
                }
            }
            Some(Value::Array(list)) => {
                for tag in list.iter().filter_map(Value::as_str) {
                    identity = identity.tag(tag);
                }
            }
            _ => {}
        }
        for (claim, header) in &self.forward {
            let value = match claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                _ => continue,
            };
            // A claim that cannot be a header value (a line break) is not forwarded: the
            // upstream sees the header absent, never a forged line.
            if let Ok(value) = HeaderValue::try_from(value) {
                identity = identity.forward_header(header.clone(), value);
            }
        }
        Ok(identity)
    }
}

/// A header `jsonwebtoken` cannot read: `token_algorithm` when it is JSON naming an algorithm
/// the crate does not have (`none` above all), `token_invalid` otherwise.
fn unknown_algorithm(token: &str) -> AuthFailure {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    let named = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .is_some_and(|h| h.get("alg").is_some_and(Value::is_string));
    match named {
        true => AuthFailure::Algorithm,
        false => AuthFailure::Invalid,
    }
}

/// The failure a `jsonwebtoken` error means for the client.
fn cause(kind: &jsonwebtoken::errors::ErrorKind) -> AuthFailure {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            AuthFailure::Algorithm
        }
        K::ExpiredSignature => AuthFailure::Expired,
        K::ImmatureSignature => AuthFailure::NotYetValid,
        K::InvalidIssuer => AuthFailure::Issuer,
        K::InvalidAudience => AuthFailure::Audience,
        K::MissingRequiredClaim(claim) if claim == "iss" => AuthFailure::Issuer,
        K::MissingRequiredClaim(claim) if claim == "aud" => AuthFailure::Audience,
        K::MissingRequiredClaim(_) | K::InvalidSubject => AuthFailure::Claims,
        _ => AuthFailure::Invalid,
    }
}

/// `Authorization: Bearer <token>` (one header; the scheme in any case).
fn bearer(parts: &Parts) -> Option<String> {
    let mut all = parts.headers.get_all(AUTHORIZATION).iter();
    let value = all.next()?.to_str().ok()?;
    if all.next().is_some() {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}

/// Removes every `Authorization: Bearer` header (used or not: none goes upstream); other
/// schemes stay.
fn strip_bearer(parts: &mut Parts) {
    let is_bearer = |v: &HeaderValue| {
        v.as_bytes()
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
    };
    if !parts.headers.get_all(AUTHORIZATION).iter().any(is_bearer) {
        return;
    }
    let kept: Vec<HeaderValue> = parts
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter(|v| !is_bearer(v))
        .cloned()
        .collect();
    parts.headers.remove(AUTHORIZATION);
    for value in kept {
        parts.headers.append(AUTHORIZATION, value);
    }
}

/// The value of cookie `name` (quotes removed), from any `Cookie` header.
fn cookie(parts: &Parts, name: &str) -> Option<String> {
    cookie_value(&parts.headers, name)
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// Removes every `name=` parameter from the URI's query; returns the first one's value.
fn take_query_param(uri: &mut Uri, name: &str) -> Option<String> {
    let pq = uri.path_and_query()?;
    let query = pq.query()?;
    let mut found = None;
    let mut kept = Vec::new();
    let mut removed = false;
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if key == name {
            removed = true;
            if found.is_none() {
                found = pair
                    .split_once('=')
                    .map(|(_, v)| {
                        String::from_utf8_lossy(&percent_decode(v.as_bytes())).into_owned()
                    })
                    .filter(|v| !v.is_empty());
            }
        } else {
            kept.push(pair);
        }
    }
    if !removed {
        return None;
    }
    let path = pq.path();
    let rebuilt = match kept.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{}", kept.join("&")),
    };
    // Made of the URI's own pieces: always valid.
    if let Ok(pq) = PathAndQuery::try_from(rebuilt) {
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(rebuilt) = Uri::from_parts(parts) {
            *uri = rebuilt;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_is_taken_out_and_the_rest_kept() {
        let mut uri: Uri = "/chat?room=1&access_token=a.b.c&x=2&access_token=d"
            .parse()
            .unwrap();
        assert_eq!(
            take_query_param(&mut uri, "access_token").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(uri.to_string(), "/chat?room=1&x=2");
        let mut only: Uri = "/chat?access_token=a%2Eb".parse().unwrap();
        assert_eq!(
            take_query_param(&mut only, "access_token").as_deref(),
            Some("a.b")
        );
        assert_eq!(only.to_string(), "/chat");
        let mut none: Uri = "/chat?room=1".parse().unwrap();
        assert_eq!(take_query_param(&mut none, "access_token"), None);
        assert_eq!(none.to_string(), "/chat?room=1");
    }

    /// A key set with an encryption key `jsonwebtoken` cannot read loads its signature keys.
    #[test]
    fn encryption_keys_in_a_jwks_are_skipped_not_fatal() {
        let key = |kid: &str, extra: (&str, Value)| {
            let mut k = serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "kid": kid,
                "x": "WKn-ZIGevcwGIyyrzFoZNBdaq9_TsqzGl96oc0CWuis",
                "y": "y77t-RvAHRKTsSGdIYUfweuOvwrvDD-Q3Hv5J0fSKbE",
            });
            k[extra.0] = extra.1;
            k
        };
        let set = serde_json::json!({ "keys": [
            key("enc", ("alg", Value::from("ECDH-ES+A256KW"))),
            key("ops", ("key_ops", serde_json::json!(["encrypt"]))),
            key("sig", ("alg", Value::from("ES256"))),
        ]});
        let jwks = set.to_string().into_bytes();
        let keys = JwtKeys::from_jwks(&jwks).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[0].id.as_deref(), Some("sig"));
    }

    #[test]
    fn hmac_secrets_must_be_long_and_never_mix_with_public_algorithms() {
        assert_eq!(
            JwtKeys::hmac_secret(b"short").unwrap_err(),
            JwtConfigError::SecretTooShort(5)
        );
        let keys = JwtKeys::hmac_secret(&[7; 32]).unwrap();
        let err = JwtAuth::builder(keys.clone())
            .algorithms(["RS256"])
            .build()
            .unwrap_err();
        assert_eq!(err, JwtConfigError::AlgorithmWithoutKey("RS256".into()));
        let err = JwtAuth::builder(keys)
            .algorithms(["none"])
            .build()
            .unwrap_err();
        assert_eq!(err, JwtConfigError::UnknownAlgorithm("none".into()));
    }
}
