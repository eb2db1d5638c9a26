//! The sandbox: an embedded Kubernetes API server over real HTTP that kubectl and kube-rs talk to.
//!
//! It is the foundation of freezeframe's integration tests and of `freezeframe demo` (never of the product
//! image: the `freezeframe` crate depends on it only for tests and the `demo` feature): objects live in memory,
//! workload controllers create the pods and claims a real cluster would, pods of freezeframe's own image
//! really run (see [`kubelet`]), and `pods/exec` runs host processes inside a per-pod directory under the
//! state dir, with the pod's volumes at their mount paths (see [`mountns`]).

pub mod api;
pub mod auth;
pub mod binder;
pub mod cli;
pub mod cluster;
pub mod controllers;
pub mod discovery;
pub mod exec;
pub mod field_selector;
pub mod kubelet;
pub mod lifecycle;
pub mod mountns;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod snapshots;
pub mod status;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

pub use cluster::{Cluster, Fault};
pub use status::ApiError;

use cluster::{WriteOptions, render};
use registry::bootstrap_crds;
use store::StoreLimits;

/// Why the sandbox could not start or load manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener failed.
    #[error("cannot listen on 127.0.0.1:{port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest is not valid YAML.
    #[error("{path}: document {index} is not valid YAML")]
    Yaml {
        path: PathBuf,
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    /// A manifest names a kind the sandbox does not serve.
    #[error("{path}: document {index}: no matches for kind \"{kind}\" in version \"{api_version}\"")]
    UnknownKind {
        path: PathBuf,
        index: usize,
        kind: String,
        api_version: String,
    },
    /// The API refused a manifest object.
    #[error("{path}: document {index} ({kind} {name})")]
    Rejected {
        path: PathBuf,
        index: usize,
        kind: String,
        name: String,
        #[source]
        source: Box<ApiError>,
    },
    /// The HTTPS listener's certificate could not be made.
    #[error("cannot set up the sandbox's HTTPS listener")]
    Tls(#[source] tls::TlsError),
    /// Building a client for the sandbox failed.
    #[error("cannot build a Kubernetes client for the sandbox")]
    Client(#[source] kube::Error),
    /// A kubeconfig for a ServiceAccount was asked for one that does not exist.
    #[error("ServiceAccount {namespace}/{name} does not exist: create it before asking for its kubeconfig")]
    NoServiceAccount { namespace: String, name: String },
    /// The kubeconfig the sandbox wrote could not be read back.
    #[error("kubeconfig {path} is unusable")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to start a sandbox.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Port on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// HTTPS port on 127.0.0.1 (0 = any free port): ServiceAccount kubeconfigs point here, since
    /// kubectl sends bearer tokens only over TLS.
    pub https_port: u16,
    /// Pod directories and volume data; a temporary directory (removed on drop) if `None`.
    pub state_dir: Option<PathBuf>,
    /// Where to write the kubeconfig; `<state_dir>/kubeconfig` if `None`.
    pub kubeconfig: Option<PathBuf>,
    /// Interval of watch bookmarks (default 10 s).
    pub bookmark_interval: Option<Duration>,
    /// Store limits (history for watch resume, snapshots for continue tokens).
    pub limits: Option<StoreLimits>,
    /// How long after the cut the bootstrap snapshot classes' snapshots become `readyToUse` (default:
    /// at once). Per class or snapshot: the [`snapshots::READY_AFTER_ANNOTATION`] annotation.
    pub snapshot_ready_delay: Option<Duration>,
    /// How long the namespace controller waits after a namespace is marked for deletion before it starts
    /// emptying it (default: not at all). A real one waits 5 s (`namespaceDeletionGracePeriod`), which is
    /// why `kubectl delete -f` of a namespace and its contents finds every object still there.
    pub namespace_deletion_delay: Option<Duration>,
    /// The repository name (last path segment) of freezeframe's image, whose pods really run as host
    /// processes (default `freezeframe`; see [`kubelet`]).
    pub own_image_name: Option<String>,
    /// The binary that image's `/usr/local/bin/freezeframe` maps to (default: env
    /// `FREEZEFRAME_SANDBOX_IMAGE_BINARY`, else `freezeframe` next to the current executable).
    pub own_image_binary: Option<PathBuf>,
    /// Random faults on the API (`sandbox --fault-rate ...`): none if `None`.
    pub random_faults: Option<cluster::RandomFaults>,
}

/// A running sandbox API server. Dropping it stops the server.
pub struct Sandbox {
    addr: SocketAddr,
    https_addr: SocketAddr,
    ca_pem: String,
    cluster: Arc<Cluster>,
    kubeconfig: PathBuf,
    state_dir: PathBuf,
    stop: tokio_util::sync::CancellationToken,
    _temp: Option<tempfile::TempDir>,
}

impl Sandbox {
    /// Start serving on 127.0.0.1 and write the kubeconfig.
    pub async fn start(options: SandboxOptions) -> Result<Sandbox> {
        let (state_dir, temp) = match options.state_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("freezeframe-sandbox-")
                    .tempdir()
                    .map_err(|source| Error::Io {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&state_dir).map_err(|source| Error::Io {
            path: state_dir.clone(),
            source,
        })?;
        let cluster = Arc::new(Cluster::new(cluster::ClusterOptions {
            state_dir: state_dir.clone(),
            limits: options.limits.unwrap_or_default(),
            own_image: kubelet::OwnImage::new(options.own_image_name, options.own_image_binary),
            random_faults: options.random_faults,
        }));
        snapshots::spawn_readiness(&cluster);
        lifecycle::spawn(&cluster, options.namespace_deletion_delay.unwrap_or_default());
        kubelet::spawn(&cluster);
        bootstrap(&cluster, options.snapshot_ready_delay);
        let bind = |port: u16| async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .map_err(|source| Error::Bind { port, source })?;
            let addr = listener
                .local_addr()
                .map_err(|source| Error::Bind { port, source })?;
            Ok::<_, Error>((listener, addr))
        };
        let (listener, addr) = bind(options.port).await?;
        let (https_listener, https_addr) = bind(options.https_port).await?;
        let cert = tls::ServingCert::generate().map_err(Error::Tls)?;
        let app = api::router(api::AppState {
            cluster: cluster.clone(),
            bookmark_interval: options.bookmark_interval.unwrap_or(Duration::from_secs(10)),
        });
        let stop = tokio_util::sync::CancellationToken::new();
        tls::spawn_https(https_listener, &cert, app.clone(), stop.clone());
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "sandbox server stopped");
            }
        });
        let kubeconfig = options.kubeconfig.unwrap_or_else(|| state_dir.join("kubeconfig"));
        write_kubeconfig(
            &kubeconfig,
            &Server::Http(addr),
            cluster.authenticator.admin_token(),
            "default",
        )?;
        cluster.kubelet.set_kubeconfig(kubeconfig.clone());
        Ok(Sandbox {
            addr,
            https_addr,
            ca_pem: cert.ca_pem().to_string(),
            cluster,
            kubeconfig,
            state_dir,
            stop,
            _temp: temp,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:<port>`: the same API over TLS (certificate signed by [`Sandbox::ca_pem`]).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    /// The CA that signed the HTTPS listener's certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The bearer token of the admin kubeconfig (user `kubernetes-admin`, group `system:masters`).
    pub fn admin_token(&self) -> &str {
        self.cluster.authenticator.admin_token()
    }

    /// Write a kubeconfig at `path` that authenticates as ServiceAccount `namespace/name` (a token as
    /// `kubectl create token` would get, valid for a day; the HTTPS listener, since kubectl sends tokens
    /// only over TLS), its context's namespace `namespace`. The
    /// ServiceAccount must exist; requests are then authorized by the RBAC objects that bind it.
    pub fn write_service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) -> Result<()> {
        let account = self
            .cluster
            .store
            .get(&registry::ResourceId::new("", "serviceaccounts"), namespace, name)
            .ok_or_else(|| Error::NoServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            })?;
        let uid = account["metadata"]["uid"].as_str().unwrap_or_default();
        let (token, _) = self.cluster.authenticator.mint(
            namespace,
            name,
            uid,
            &[auth::API_AUDIENCE.to_string()],
            24 * 3600,
            chrono::Utc::now(),
        );
        let server = Server::Https {
            addr: self.https_addr,
            ca_pem: &self.ca_pem,
        };
        write_kubeconfig(path, &server, &token, namespace)
    }

    /// The in-process cluster (for fault injection, compaction and direct inspection in tests).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// A kube client built from the kubeconfig the sandbox wrote (so that file is exercised too).
    pub async fn client(&self) -> Result<kube::Client> {
        install_crypto_provider();
        let kc =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).map_err(|source| Error::Kubeconfig {
                path: self.kubeconfig.clone(),
                source,
            })?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: self.kubeconfig.clone(),
                source,
            })?;
        kube::Client::try_from(config).map_err(Error::Client)
    }

    /// Apply every `*.yaml`, `*.yml` and `*.json` file in `dir` (sorted by name), like `kubectl apply -f`.
    pub fn load_manifests(&self, dir: &Path) -> Result<usize> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        files.sort();
        let mut count = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| Error::Io {
                path: f.clone(),
                source,
            })?;
            count += self.apply_text(&f, &text)?;
        }
        Ok(count)
    }

    /// Apply a multi-document YAML text (create, or replace what exists). Returns objects applied.
    pub fn apply_text(&self, path: &Path, text: &str) -> Result<usize> {
        let mut count = 0;
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize_yaml(doc).map_err(|source| Error::Yaml {
                path: path.into(),
                index,
                source,
            })?;
            if value.is_null() {
                continue;
            }
            let items =
                if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) && value["items"].is_array() {
                    value["items"].as_array().cloned().unwrap_or_default()
                } else {
                    vec![value]
                };
            for obj in items {
                self.apply_object(path, index, obj)?;
                count += 1;
            }
        }
        Ok(count)
    }

    fn apply_object(&self, path: &Path, index: usize, obj: Value) -> Result<()> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let rt = self
            .cluster
            .type_by_kind(&api_version, &kind)
            .ok_or_else(|| Error::UnknownKind {
                path: path.into(),
                index,
                kind: kind.clone(),
                api_version: api_version.clone(),
            })?;
        let ns = if rt.namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let opts = WriteOptions {
            field_manager: Some("freezeframe-sandbox".into()),
            ..Default::default()
        };
        let rejected = |source: ApiError| Error::Rejected {
            path: path.into(),
            index,
            kind: kind.clone(),
            name: name.clone(),
            source: Box::new(source),
        };
        match self.cluster.create(&rt, &ns, obj.clone(), &opts) {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => {
                let mut next = obj;
                next["metadata"]["namespace"] = json!(ns);
                if !rt.namespaced
                    && let Some(m) = next["metadata"].as_object_mut()
                {
                    m.remove("namespace");
                }
                self.cluster
                    .update(&rt, &ns, &name, next, cluster::Part::Main, &opts)
                    .map(|_| ())
                    .map_err(rejected)
            }
            Err(e) => Err(rejected(e)),
        }
    }

    /// Stop serving and kill every process the sandbox started (also done on drop).
    pub fn shutdown(&mut self) {
        self.stop.cancel();
        self.cluster.kubelet.kill_all();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

trait DeserializeYaml: Sized {
    fn deserialize_yaml(doc: serde_yaml::Deserializer<'_>) -> std::result::Result<Self, serde_yaml::Error>;
}

impl DeserializeYaml for Value {
    fn deserialize_yaml(doc: serde_yaml::Deserializer<'_>) -> std::result::Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(doc)
    }
}

/// What a fresh cluster has: system namespaces, a node, the snapshot CRDs, default storage and snapshot
/// classes for the sandbox CSI driver.
fn bootstrap(cluster: &Cluster, snapshot_ready_delay: Option<Duration>) {
    let opts = WriteOptions {
        field_manager: Some("kube-apiserver".into()),
        ..Default::default()
    };
    let create = |api_version: &str, kind: &str, obj: Value| {
        let rt = cluster
            .type_by_kind(api_version, kind)
            .expect("bootstrap kinds are served");
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Err(e) = cluster.create(&rt, &ns, obj, &opts) {
            tracing::error!(kind, error = %e, "sandbox bootstrap object rejected");
        }
    };
    let snapclass_annotations = |default_key: &str| {
        let mut a = json!({default_key: "true"});
        if let Some(d) = snapshot_ready_delay.filter(|d| !d.is_zero()) {
            a[snapshots::READY_AFTER_ANNOTATION] = json!(format!("{}ms", d.as_millis()));
        }
        a
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        create(
            "v1",
            "Namespace",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    create(
        "v1",
        "Node",
        json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "sandbox-node", "labels": {"kubernetes.io/hostname": "sandbox-node", "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/control-plane": ""}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "sandbox-node"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "operatingSystem": "linux", "architecture": "amd64"}}}),
    );
    create(
        "v1",
        "Service",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}),
    );
    for (kind, object) in rbac::bootstrap_policy() {
        create("rbac.authorization.k8s.io/v1", kind, object);
    }
    for crd in bootstrap_crds() {
        create("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd);
    }
    create(
        "storage.k8s.io/v1",
        "StorageClass",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "sandbox", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "sandbox.freezeframe.dev", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": true}),
    );
    create(
        "storage.k8s.io/v1",
        "CSIDriver",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": "sandbox.freezeframe.dev"}, "spec": {"attachRequired": false, "podInfoOnMount": false}}),
    );
    create(
        "snapshot.storage.k8s.io/v1",
        "VolumeSnapshotClass",
        json!({"apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": "sandbox-snapclass", "annotations": snapclass_annotations("snapshot.storage.kubernetes.io/is-default-class")},
        "driver": "sandbox.freezeframe.dev", "deletionPolicy": "Delete"}),
    );
    create(
        "groupsnapshot.storage.k8s.io/v1beta1",
        "VolumeGroupSnapshotClass",
        json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta1",
        "kind": "VolumeGroupSnapshotClass",
        "metadata": {"name": "sandbox-groupsnapclass", "annotations": snapclass_annotations("groupsnapshot.storage.kubernetes.io/is-default-class")},
        "driver": "sandbox.freezeframe.dev", "deletionPolicy": "Delete"}),
    );
    let _ = render;
}

/// Where a kubeconfig points.
pub enum Server<'a> {
    /// The plain-HTTP listener.
    Http(SocketAddr),
    /// The HTTPS listener, with the CA that signed its certificate.
    Https { addr: SocketAddr, ca_pem: &'a str },
}

/// Write a kubeconfig for `server` that kubectl and kube-rs accept, authenticating with bearer `token`,
/// its context's namespace `namespace`.
pub fn write_kubeconfig(path: &Path, server: &Server<'_>, token: &str, namespace: &str) -> Result<()> {
    use base64::Engine;
    let cluster = match server {
        Server::Http(addr) => format!("    server: http://{addr}\n"),
        Server::Https { addr, ca_pem } => format!(
            "    server: https://{addr}\n    certificate-authority-data: {}\n",
            base64::engine::general_purpose::STANDARD.encode(ca_pem)
        ),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: freezeframe-sandbox\n  cluster:\n{cluster}\
contexts:\n- name: freezeframe-sandbox\n  context:\n    cluster: freezeframe-sandbox\n    user: freezeframe-sandbox\n    namespace: {namespace}\n\
current-context: freezeframe-sandbox\nusers:\n- name: freezeframe-sandbox\n  user:\n    token: {token}\npreferences: {{}}\n"
    );
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.into(),
            source,
        })?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })
}

/// Choose rustls' crypto provider once per process. kube's and the AWS SDK's TLS stacks pull in both
/// aws-lc-rs and ring, so rustls cannot pick one itself and a `kube::Client` would panic without this.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which is just as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
