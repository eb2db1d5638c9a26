//! Where a repository lives, in restic's repository syntax, and the rustic backend that reaches it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustic_backend::{LocalBackend, OpenDALBackend};
use rustic_core::{RepositoryBackends, WriteBackend};

use super::{Error, Result};
use crate::policy::Backend;
use crate::store::Layout;

/// The host restic writes for AWS S3 (`s3:s3.amazonaws.com/bucket/prefix`).
const AWS_HOST: &str = "s3.amazonaws.com";
/// The region used for custom endpoints when none is set (SeaweedFS, MinIO and Ceph accept any).
const CUSTOM_ENDPOINT_REGION: &str = "us-east-1";

/// A repository's location: what an operator pastes into `restic -r`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryLocation {
    /// An S3 bucket (AWS or an S3-compatible endpoint) and a key prefix.
    S3(S3Location),
    /// A directory.
    Local(PathBuf),
}

/// An S3 repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `http(s)://host[:port]` of an S3-compatible store; `None` for AWS.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the repository, without leading or trailing `/` (empty: bucket root).
    pub prefix: String,
    /// The bucket's region when known from the storage settings; else from [`S3Credentials`].
    pub region: Option<String>,
}

impl RepositoryLocation {
    /// Parse restic's repository syntax: `s3:http(s)://host[:port]/bucket[/prefix]`,
    /// `s3:host/bucket[/prefix]` (https), `local:/abs/path` or `/abs/path`.
    pub fn parse(text: &str) -> Result<RepositoryLocation> {
        let bad = |reason: &str| Error::Location {
            given: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = text.strip_prefix("s3:") {
            let (scheme, rest) = if let Some(rest) = rest.strip_prefix("https://") {
                ("https", rest)
            } else if let Some(rest) = rest.strip_prefix("http://") {
                ("http", rest)
            } else {
                ("https", rest)
            };
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() {
                return Err(bad("no host"));
            }
            let path = path.trim_matches('/');
            let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket after the host"));
            }
            if prefix.split('/').any(|s| s == "." || s == "..")
                || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
            {
                return Err(bad("the prefix has an empty, `.` or `..` segment"));
            }
            let endpoint = (host != AWS_HOST).then(|| format!("{scheme}://{host}"));
            return Ok(RepositoryLocation::S3(S3Location {
                endpoint,
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                region: None,
            }));
        }
        let local = text.strip_prefix("local:");
        let path = local.unwrap_or(text);
        if path.starts_with('/') {
            let trimmed = path.trim_end_matches('/');
            return Ok(RepositoryLocation::Local(PathBuf::from(if trimmed.is_empty() {
                "/"
            } else {
                trimmed
            })));
        }
        if local.is_none()
            && let Some((scheme, _)) = text.split_once(':')
            && !scheme.contains('/')
        {
            return Err(bad(&format!("the {scheme:?} backend is not supported")));
        }
        Err(bad("a local repository needs an absolute path"))
    }

    /// The repository of a storage: `<storage prefix>/repository/` in the same bucket or directory
    /// (the one place that knows the key is [`Layout::repository`]).
    pub fn for_storage(backend: &Backend) -> RepositoryLocation {
        match backend {
            Backend::Filesystem { path } => {
                let key = Layout::new("").repository();
                RepositoryLocation::Local(Path::new(path).join(key.trim_end_matches('/')))
            }
            Backend::S3(s3) => {
                let key = Layout::new(&s3.prefix).repository();
                RepositoryLocation::S3(S3Location {
                    endpoint: s3.endpoint.as_ref().map(|e| e.trim_end_matches('/').to_string()),
                    bucket: s3.bucket.clone(),
                    prefix: key.trim_end_matches('/').to_string(),
                    region: s3.region.clone(),
                })
            }
        }
    }

    /// The rustic backends that reach this repository (no I/O: S3 connects on first use).
    pub(super) fn backends(&self, credentials: &S3Credentials) -> Result<RepositoryBackends> {
        let backend: Arc<dyn WriteBackend> = match self {
            RepositoryLocation::Local(path) => Arc::new(
                LocalBackend::new(path.to_string_lossy(), Vec::<(String, String)>::new())
                    .map_err(|source| self.failed("open the directory", source))?,
            ),
            RepositoryLocation::S3(s3) => Arc::new(
                OpenDALBackend::new("s3", s3.opendal_options(credentials, &self.to_string())?)
                    .map_err(|source| self.failed("set up S3", source))?,
            ),
        };
        Ok(RepositoryBackends::new(backend, None))
    }

    pub(super) fn failed(
        &self,
        operation: impl Into<String>,
        source: Box<rustic_core::RusticError>,
    ) -> Error {
        if source.is_incorrect_password() {
            return Error::WrongPassword {
                location: self.to_string(),
            };
        }
        Error::Repository {
            location: self.to_string(),
            operation: operation.into(),
            source: source.into(),
        }
    }
}

impl S3Location {
    /// Options for opendal's S3 service: path-style addressing for custom endpoints, virtual-host style
    /// for AWS (as restic does), credentials from [`S3Credentials`].
    fn opendal_options(
        &self,
        credentials: &S3Credentials,
        location: &str,
    ) -> Result<BTreeMap<String, String>> {
        let mut options = BTreeMap::new();
        options.insert("bucket".to_string(), self.bucket.clone());
        options.insert("root".to_string(), format!("/{}", self.prefix));
        let region = self
            .region
            .clone()
            .or_else(|| credentials.region.clone())
            .or_else(|| self.endpoint.as_ref().map(|_| CUSTOM_ENDPOINT_REGION.to_string()))
            .ok_or_else(|| Error::NoRegion {
                location: location.to_string(),
            })?;
        options.insert("region".to_string(), region);
        match &self.endpoint {
            Some(endpoint) => {
                options.insert("endpoint".to_string(), endpoint.clone());
            }
            None => {
                options.insert("enable_virtual_host_style".to_string(), "true".to_string());
            }
        }
        if let Some(key) = &credentials.access_key_id {
            options.insert("access_key_id".to_string(), key.clone());
        }
        if let Some(secret) = &credentials.secret_access_key {
            options.insert("secret_access_key".to_string(), secret.clone());
        }
        if let Some(token) = &credentials.session_token {
            options.insert("session_token".to_string(), token.clone());
        }
        Ok(options)
    }
}

impl fmt::Display for RepositoryLocation {
    /// The repository string stock restic accepts (`restic -r <this>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepositoryLocation::Local(path) => write!(f, "{}", path.display()),
            RepositoryLocation::S3(s3) => {
                let host = s3.endpoint.as_deref().unwrap_or(AWS_HOST);
                write!(f, "s3:{host}/{}", s3.bucket)?;
                if !s3.prefix.is_empty() {
                    write!(f, "/{}", s3.prefix)?;
                }
                Ok(())
            }
        }
    }
}

/// S3 credentials and region, read from the variables restic reads: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`). Without keys,
/// opendal's default chain applies (web identity / IRSA, profile).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
}

impl S3Credentials {
    /// From the process environment.
    pub fn from_env() -> S3Credentials {
        S3Credentials::from_vars(|name| std::env::var(name).ok())
    }

    /// From variables looked up by `var` (empty values count as unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> S3Credentials {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        S3Credentials {
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            session_token: get("AWS_SESSION_TOKEN"),
            region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
        }
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &shown(&self.secret_access_key))
            .field("session_token", &shown(&self.session_token))
            .field("region", &self.region)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::S3Storage;

    fn s3(endpoint: Option<&str>, bucket: &str, prefix: &str) -> RepositoryLocation {
        RepositoryLocation::S3(S3Location {
            endpoint: endpoint.map(str::to_string),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: None,
        })
    }

    #[test]
    fn given_restic_s3_strings_when_parsed_then_endpoint_bucket_and_prefix_are_split() {
        let cases = [
            (
                "s3:http://127.0.0.1:8333/bucket/some/prefix/repository",
                s3(Some("http://127.0.0.1:8333"), "bucket", "some/prefix/repository"),
            ),
            (
                "s3:https://minio.example:9000/b",
                s3(Some("https://minio.example:9000"), "b", ""),
            ),
            (
                "s3:minio.example/b/p/",
                s3(Some("https://minio.example"), "b", "p"),
            ),
            ("s3:s3.amazonaws.com/b/p", s3(None, "b", "p")),
        ];
        for (text, expected) in cases {
            assert_eq!(RepositoryLocation::parse(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn given_local_strings_when_parsed_then_absolute_paths_are_kept() {
        for (text, path) in [
            ("/var/repo", "/var/repo"),
            ("local:/var/repo/", "/var/repo"),
            ("/", "/"),
        ] {
            assert_eq!(
                RepositoryLocation::parse(text).unwrap(),
                RepositoryLocation::Local(PathBuf::from(path))
            );
        }
    }

    #[test]
    fn given_unusable_strings_when_parsed_then_the_error_says_why_and_lists_accepted_forms() {
        for (text, reason) in [
            ("relative/repo", "absolute path"),
            ("local:repo", "absolute path"),
            ("sftp:user@host:/srv/repo", "\"sftp\" backend is not supported"),
            ("s3:", "no host"),
            ("s3:http://127.0.0.1:8333", "no bucket"),
            ("s3:http://127.0.0.1:8333/b/../x", "`..`"),
            ("s3:http://127.0.0.1:8333/b/x//y", "empty"),
        ] {
            let message = RepositoryLocation::parse(text).unwrap_err().to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("accepted: s3:http(s)://"), "{message}");
        }
    }

    #[test]
    fn given_locations_when_displayed_then_restic_reads_the_same_string_back() {
        for text in [
            "s3:http://127.0.0.1:8333/bucket/some/prefix/repository",
            "s3:s3.amazonaws.com/b",
            "/var/repo",
        ] {
            let parsed = RepositoryLocation::parse(text).unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(RepositoryLocation::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn given_storages_when_repository_located_then_it_is_under_prefix_slash_repository() {
        let fs = Backend::Filesystem {
            path: "/backups".into(),
        };
        assert_eq!(
            RepositoryLocation::for_storage(&fs).to_string(),
            "/backups/repository"
        );
        let storage = S3Storage {
            bucket: "bkt".into(),
            prefix: "clusters/prod".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:8333/".into()),
            force_path_style: true,
            credentials_secret: None,
            server_side_encryption: None,
            kms_key_id: None,
            object_lock: None,
        };
        let location = RepositoryLocation::for_storage(&Backend::S3(storage.clone()));
        assert_eq!(
            location.to_string(),
            "s3:http://127.0.0.1:8333/bkt/clusters/prod/repository"
        );
        let RepositoryLocation::S3(s3) = &location else {
            panic!("not s3")
        };
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        let aws = RepositoryLocation::for_storage(&Backend::S3(S3Storage {
            prefix: String::new(),
            endpoint: None,
            ..storage
        }));
        assert_eq!(aws.to_string(), "s3:s3.amazonaws.com/bkt/repository");
    }

    #[test]
    fn given_custom_endpoint_when_options_built_then_path_style_with_credentials_and_default_region() {
        let RepositoryLocation::S3(location) =
            RepositoryLocation::parse("s3:http://127.0.0.1:8333/b/p/repository").unwrap()
        else {
            panic!("not s3")
        };
        let credentials = S3Credentials::from_vars(|name| match name {
            "AWS_ACCESS_KEY_ID" => Some("AK".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("SK".into()),
            "AWS_SESSION_TOKEN" => Some(String::new()),
            _ => None,
        });
        let options = location.opendal_options(&credentials, "x").unwrap();

        assert_eq!(options["bucket"], "b");
        assert_eq!(options["root"], "/p/repository");
        assert_eq!(options["endpoint"], "http://127.0.0.1:8333");
        assert_eq!(options["region"], CUSTOM_ENDPOINT_REGION);
        assert_eq!(options["access_key_id"], "AK");
        assert_eq!(options["secret_access_key"], "SK");
        assert!(!options.contains_key("session_token"), "empty means unset");
        assert!(!options.contains_key("enable_virtual_host_style"));
    }

    #[test]
    fn given_aws_without_region_when_options_built_then_error_names_aws_region() {
        let RepositoryLocation::S3(location) = RepositoryLocation::parse("s3:s3.amazonaws.com/b").unwrap()
        else {
            panic!("not s3")
        };
        let message = location
            .opendal_options(&S3Credentials::default(), "s3:s3.amazonaws.com/b")
            .unwrap_err()
            .to_string();
        assert!(message.contains("AWS_REGION"), "{message}");

        let with_region = S3Credentials::from_vars(|name| {
            (name == "AWS_DEFAULT_REGION").then(|| "eu-central-1".to_string())
        });
        let options = location.opendal_options(&with_region, "x").unwrap();
        assert_eq!(options["region"], "eu-central-1");
        assert_eq!(options["enable_virtual_host_style"], "true");
    }

    #[test]
    fn given_credentials_when_debug_printed_then_secrets_are_hidden() {
        let credentials = S3Credentials::from_vars(|name| Some(format!("value-of-{name}")));
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("value-of-AWS_SECRET_ACCESS_KEY"), "{shown}");
        assert!(!shown.contains("value-of-AWS_SESSION_TOKEN"), "{shown}");
    }
}
