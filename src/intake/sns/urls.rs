//! The trust decision for SNS URLs: https, an `sns.<region>.amazonaws.com[.cn]` host, the
//! default port, no userinfo.

use url::{Host, Url};

use super::SnsError;

/// Whether `host` is `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`.
pub(super) fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region.is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// Checks that `raw` is an https URL on an SNS host (no userinfo, default port).
pub(super) fn check_sns_url(raw: &str, what: &str) -> Result<Url, SnsError> {
    let url = Url::parse(raw).map_err(|e| SnsError::UntrustedUrl(format!("{what}: {e}")))?;
    if url.scheme() != "https" {
        return Err(SnsError::UntrustedUrl(format!(
            "{what}: scheme is not https"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SnsError::UntrustedUrl(format!("{what}: has userinfo")));
    }
    // The url crate normalises an explicit :443 away for https, so any port here is non-443.
    if url.port().is_some() {
        return Err(SnsError::UntrustedUrl(format!("{what}: non-default port")));
    }
    match url.host() {
        Some(Host::Domain(host)) if is_sns_host(host) => Ok(url),
        _ => Err(SnsError::UntrustedUrl(format!(
            "{what}: host is not sns.<region>.amazonaws.com[.cn]"
        ))),
    }
}

/// Checks `SigningCertURL`: an SNS URL whose path ends in `.pem`.
pub(super) fn check_cert_url(raw: &str) -> Result<Url, SnsError> {
    let url = check_sns_url(raw, "SigningCertURL")?;
    if !url.path().ends_with(".pem") {
        return Err(SnsError::UntrustedUrl(
            "SigningCertURL: path does not end in .pem".into(),
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBSCRIBE_URL: &str = super::super::testkit::SUBSCRIBE_URL;

    #[test]
    fn sns_host_rule() {
        for ok in [
            "sns.us-east-1.amazonaws.com",
            "sns.cn-north-1.amazonaws.com.cn",
            "sns.us-gov-west-1.amazonaws.com",
        ] {
            assert!(is_sns_host(ok), "{ok}");
        }
        for bad in [
            "sns.amazonaws.com",
            "sns..amazonaws.com",
            "sns.us-east-1.amazonaws.com.evil.com",
            "sns.US-EAST-1.amazonaws.com",
            "sns.a.b.amazonaws.com",
            "xsns.us-east-1.amazonaws.com",
            "sqs.us-east-1.amazonaws.com",
        ] {
            assert!(!is_sns_host(bad), "{bad}");
        }
        // The url crate lowercases hosts, and an explicit :443 is the default port.
        check_cert_url("https://SNS.US-EAST-1.amazonaws.com:443/SimpleNotificationService-x.pem")
            .unwrap();
        check_sns_url(SUBSCRIBE_URL, "SubscribeURL").unwrap();
    }
}
