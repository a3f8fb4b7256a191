//! Why a request to Vault failed, in words an operator can act on: a TLS failure names its
//! cause (unknown CA, name mismatch, expired certificate) instead of "error sending request".

use std::error::Error;
use std::io::ErrorKind;

use rustls::CertificateError;

/// Describes a failed request from its whole cause chain: the TLS cause when there is one,
/// else the socket's, else every layer's message joined.
pub(super) fn describe(error: &(dyn Error + 'static)) -> String {
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    let mut chain: Vec<String> = Vec::new();
    while let Some(e) = cause {
        for inner in unwrapped(e) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return tls_message(tls);
            }
            if let Some(io) = inner.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    ErrorKind::ConnectionRefused => {
                        return "connection refused: nothing listens at vault.address".into();
                    }
                    ErrorKind::TimedOut => return "timed out waiting for Vault".into(),
                    _ => {}
                }
            }
        }
        let text = e.to_string();
        // Layers often repeat their source's message; keep each once.
        if !chain.iter().any(|c| c.contains(&text)) {
            chain.push(text);
        }
        cause = e.source();
    }
    chain.join(": ")
}

/// `e` and, when it is an `io::Error`, the errors it wraps, outermost first.
/// `io::Error::source` skips the wrapped error itself, and hyper-rustls's rustls error
/// arrives as an `io::Error` inside another `io::Error`.
fn unwrapped<'a>(e: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut layers = vec![e];
    let mut current = e;
    while let Some(inner) = current
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn Error + 'static) = inner;
        layers.push(inner);
        current = inner;
    }
    layers
}

fn tls_message(e: &rustls::Error) -> String {
    let why = match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "unknown CA: Vault's certificate is not signed by a CA sever trusts \
                 (set vault.tls.ca_file to the CA that issued it)"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name mismatch: Vault's certificate is not valid for the host in vault.address"
                    .to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "expired certificate: Vault's certificate has expired (or this host's clock is wrong)"
                    .to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not yet valid: check this host's clock".to_owned()
            }
            CertificateError::Revoked => "revoked certificate".to_owned(),
            other => format!("invalid certificate: {other:?}"),
        },
        other => other.to_string(),
    };
    format!("TLS handshake with Vault failed: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(ErrorKind::InvalidData, e)
    }

    #[test]
    fn tls_causes_are_named_through_an_io_error() {
        let unknown = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert!(
            describe(&unknown).contains("unknown CA"),
            "{}",
            describe(&unknown)
        );
        let name = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert!(describe(&name).contains("name mismatch"));
        let expired = wrapped(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert!(describe(&expired).contains("expired certificate"));
    }

    #[test]
    fn tls_causes_are_named_through_nested_io_errors_as_hyper_rustls_sends_them() {
        let nested = std::io::Error::other(wrapped(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert!(
            describe(&nested).contains("unknown CA"),
            "{}",
            describe(&nested)
        );
        let refused = std::io::Error::other(std::io::Error::from(ErrorKind::ConnectionRefused));
        assert!(describe(&refused).contains("connection refused"));
    }

    #[test]
    fn other_failures_keep_their_own_words() {
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert!(describe(&refused).contains("connection refused"));
        let other = std::io::Error::other("something odd");
        assert_eq!(describe(&other), "something odd");
    }
}
