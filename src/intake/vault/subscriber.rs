//! Vault Enterprise event notifications: sever subscribes to
//! `/v1/sys/events/subscribe/<type>?json=true` over a websocket, one per event type, and
//! feeds every event into the same handling as forwarded ones. Connections are re-made with
//! exponential backoff and jitter; redelivered events are recognised by their id, and
//! rotations by their `last_vault_rotation`, so a reconnect never repeats work.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use rand::Rng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::{VaultEvent, event_detail, handle_event};
use crate::config::VaultTls;
use crate::http::error::ApiError;
use crate::http::{Actor, RequestMeta};
use crate::intake::{Arrival, Claim, Intake};
use crate::resolve::vault::VaultError;

const ACTOR: Actor = Actor::VaultSubscriber;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Subscribes to every configured event type until `stop`.
pub async fn run(state: Intake, stop: CancellationToken) {
    let Some(config) = state.ctx.config.vault.clone() else {
        return;
    };
    let streams = config
        .subscriber
        .event_types
        .iter()
        .map(|event_type| stream(state.clone(), event_type.clone(), stop.clone()));
    futures_util::future::join_all(streams).await;
}

async fn stream(state: Intake, event_type: String, stop: CancellationToken) {
    let status = state.vault_status.clone();
    status.update(&event_type, |_| {});
    let mut attempt: u32 = 0;
    loop {
        match connect(&state, &event_type).await {
            Ok(mut ws) => {
                tracing::info!(%event_type, "subscribed to Vault events");
                status.update(&event_type, |s| {
                    s.connected = true;
                    s.last_error = None;
                });
                attempt = 0;
                let ended = loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        message = ws.next() => message,
                    };
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            status.update(&event_type, |s| s.last_event_at = Some(Utc::now()));
                            deliver(&state, &event_type, text.as_str()).await;
                        }
                        Some(Ok(Message::Close(_))) | None => break "closed by Vault".to_owned(),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break e.to_string(),
                    }
                };
                tracing::warn!(%event_type, reason = %ended, "Vault event subscription ended; reconnecting");
                status.update(&event_type, |s| {
                    s.connected = false;
                    s.reconnects += 1;
                    s.last_error = Some(ended);
                });
            }
            Err(e) => {
                tracing::warn!(%event_type, error = %e, "cannot subscribe to Vault events");
                status.update(&event_type, |s| {
                    s.connected = false;
                    s.last_error = Some(e.to_string());
                });
            }
        }
        // Exponential backoff with full jitter, so many replicas do not reconnect in step.
        let ceiling =
            (Duration::from_millis(250) * 2u32.saturating_pow(attempt.min(10))).min(MAX_BACKOFF);
        let pause = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
        attempt += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(state: &Intake, event_type: &str) -> Result<Socket, VaultError> {
    let vault = state
        .vault
        .as_ref()
        .ok_or_else(|| VaultError::Config("no [vault] section".into()))?;
    let config = state
        .ctx
        .config
        .vault
        .as_ref()
        .ok_or_else(|| VaultError::Config("no [vault] section".into()))?;
    let mut url =
        url::Url::parse(vault.address()).map_err(|e| VaultError::Config(e.to_string()))?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| VaultError::Config("address scheme".into()))?;
    url.set_path(&format!("/v1/sys/events/subscribe/{event_type}"));
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("json", "true");
        for ns in &config.subscriber.namespaces {
            query.append_pair("namespaces", ns);
        }
    }
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| VaultError::Config(e.to_string()))?;
    let token = vault.token().await;
    let headers = request.headers_mut();
    headers.insert(
        "X-Vault-Token",
        token
            .expose_secret()
            .parse()
            .map_err(|_| VaultError::Auth("token is not a valid header value".into()))?,
    );
    if let Some(ns) = config.namespace.as_deref() {
        headers.insert(
            "X-Vault-Namespace",
            ns.parse()
                .map_err(|_| VaultError::Config("namespace".into()))?,
        );
    }
    let connector = connector(&config.tls)?;
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(VaultError::Unavailable(e.to_string())),
        Err(_) => Err(VaultError::Unavailable("connect timed out".into())),
    }
}

async fn deliver(state: &Intake, event_type: &str, text: &str) {
    let meta = RequestMeta::from_vault("WS", format!("/v1/sys/events/subscribe/{event_type}"));
    let parsed = serde_json::from_str::<Value>(text)
        .map_err(|e| e.to_string())
        .and_then(|v| VaultEvent::parse(&v));
    let event = match parsed {
        Ok(event) => event,
        Err(e) => {
            let error = ApiError::Invalid(format!("not a Vault event: {e}"));
            state.refused(&meta, &ACTOR, &error).await;
            return;
        }
    };
    // The same event seen twice (e.g. across a reconnect) is done once.
    let arrival = Arrival {
        actor: ACTOR,
        received_at: Utc::now(),
        claims: vec![Claim::acknowledge(format!("vault-event:{}", event.id))],
        detail: event_detail(&event, &meta.remote),
    };
    if let Err(e) = handle_event(state, arrival, "subscriber", &event).await {
        state.refused(&meta, &ACTOR, &e).await;
        tracing::warn!(event_id = %event.id, error = %e, "Vault event not acted on");
    }
}

/// TLS for `wss://`: the default roots unless a CA, a client certificate or skip-verify is
/// configured.
fn connector(tls: &VaultTls) -> Result<Option<Connector>, VaultError> {
    if tls.ca_file.is_none() && tls.client_cert_file.is_none() && !tls.skip_verify {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::Config(e.to_string()))?;
    let builder = match &tls.ca_file {
        _ if tls.skip_verify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| VaultError::Config(format!("{}: {e}", path.display())))?
            {
                let cert =
                    cert.map_err(|e| VaultError::Config(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| VaultError::Config(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            // A client certificate alone: keep Mozilla's roots, as without any TLS settings.
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots)
        }
    };
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| VaultError::Config(format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| VaultError::Config(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| VaultError::Config(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Connector::Rustls(Arc::new(config))))
}

/// `vault.tls.skip_verify`: accepts any certificate but still checks the handshake
/// signatures. Only for test setups; start-up logs a warning.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
