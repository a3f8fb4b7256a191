//! A throwaway certificate authority for TLS tests, driven through the `openssl` CLI: issues
//! server certificates for chosen names with a chosen validity (current, expired, not yet
//! valid), so a test can serve a certificate with the wrong name or an expired one.
//!
//! ```ignore
//! let ca = TestCa::new("sever test CA");
//! let wrong_name = ca.issue(&["DNS:wrong.example"], Validity::Current);
//! let expired = ca.issue(&["IP:127.0.0.1"], Validity::Expired);
//! // ca.cert_path(): the CA certificate a client should trust.
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

/// When an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From a day ago to a day from now.
    Current,
    /// 1 to 2 January 2020: expired long ago.
    Expired,
    /// From 2099: not valid yet.
    NotYetValid,
}

/// A certificate and its private key, as PEM text and as files (removed with the [`TestCa`]).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its unencrypted private key, PEM.
    pub key_pem: String,
    /// The certificate's file.
    pub cert_path: PathBuf,
    /// The key's file (mode 0600).
    pub key_path: PathBuf,
}

/// A CA (EC P-256 key, self-signed) in a temp dir; every certificate it issues chains to it.
pub struct TestCa {
    dir: TempDir,
    /// Numbers the issued certificates' files.
    issued: AtomicUsize,
}

impl TestCa {
    /// A fresh CA named `common_name`, valid from a day ago for two days.
    pub fn new(common_name: &str) -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("sever-ca-")
            .tempdir()
            .expect("create CA temp dir");
        let ca = TestCa {
            dir,
            issued: AtomicUsize::new(0),
        };
        fs::write(ca.path("index.txt"), "").expect("write CA index");
        fs::write(ca.path("serial"), "1000\n").expect("write CA serial");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &ca.path_str("ca.key"),
            "-out",
            &ca.path_str("ca.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={common_name}"),
        ]);
        ca
    }

    /// The CA certificate's file (what a client passes as its CA file).
    pub fn cert_path(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        fs::read_to_string(self.cert_path()).expect("read CA certificate")
    }

    /// Issues a server certificate for `names`, each in `openssl` subjectAltName form
    /// (`"IP:127.0.0.1"`, `"DNS:localhost"`), valid as `validity` says. The first name,
    /// without its prefix, is also the subject's common name.
    pub fn issue(&self, names: &[&str], validity: Validity) -> IssuedCert {
        assert!(!names.is_empty(), "a certificate needs at least one name");
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let key = self.path(&format!("cert-{n}.key"));
        let csr = self.path(&format!("cert-{n}.csr"));
        let crt = self.path(&format!("cert-{n}.crt"));
        let cnf = self.path(&format!("cert-{n}.cnf"));
        let cn = names[0].split_once(':').map_or(names[0], |(_, v)| v);
        let p = |path: &Path| path.to_str().expect("utf-8 temp path").to_owned();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        // `openssl ca` is the CLI's only way to choose both validity dates.
        fs::write(
            &cnf,
            format!(
                "[ca]\ndefault_ca = test\n\
                 [test]\ndatabase = {index}\nnew_certs_dir = {dir}\nserial = {serial}\n\
                 default_md = sha256\npolicy = any\ncopy_extensions = none\n\
                 x509_extensions = ext\nunique_subject = no\n\
                 [any]\ncommonName = supplied\n\
                 [ext]\nsubjectAltName = {sans}\nbasicConstraints = CA:FALSE\n\
                 keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
                index = self.path_str("index.txt"),
                dir = self.dir.path().display(),
                serial = self.path_str("serial"),
                sans = names.join(","),
            ),
        )
        .expect("write CA config");
        let now = chrono::Utc::now();
        let stamp = |t: chrono::DateTime<chrono::Utc>| t.format("%Y%m%d%H%M%SZ").to_string();
        let (start, end) = match validity {
            Validity::Current => (
                stamp(now - chrono::Duration::days(1)),
                stamp(now + chrono::Duration::days(1)),
            ),
            Validity::Expired => ("20200101000000Z".to_owned(), "20200102000000Z".to_owned()),
            Validity::NotYetValid => ("20990101000000Z".to_owned(), "20990102000000Z".to_owned()),
        };
        openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &p(&cnf),
            "-cert",
            &self.path_str("ca.crt"),
            "-keyfile",
            &self.path_str("ca.key"),
            "-in",
            &p(&csr),
            "-out",
            &p(&crt),
            "-startdate",
            &start,
            "-enddate",
            &end,
        ]);
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
        }
        IssuedCert {
            cert_pem: fs::read_to_string(&crt).expect("read issued certificate"),
            key_pem: fs::read_to_string(&key).expect("read issued key"),
            cert_path: crt,
            key_path: key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_owned()
    }
}

/// Runs `openssl` with `args`; panics with its output when it fails.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
