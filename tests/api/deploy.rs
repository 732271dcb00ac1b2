//! The deployment files under `deploy/` against the binary they deploy: the Kubernetes
//! manifests of one node (`deploy/k8s`) and of a three-node cluster (`deploy/k8s-cluster`),
//! and the Grafana dashboard (`deploy/grafana`).
//!
//! What can go wrong and is checked: a setting the binary does not read (it would refuse to
//! start) or a value it refuses; a container port that is not `TIANJI_BIND`'s; a probe, a
//! Service or the scrape annotations pointing at another port or at a path that does not answer
//! 200; a grace period shorter than the graceful stop; a second replica (two owners of every
//! key); a cluster node advertising an address other than its name under the headless Service
//! its StatefulSet governs; a dashboard querying a metric, or grouping by a label, that a running node does not
//! export.

use crate::helpers::{spawn_app, status_and_json, Backend, TestApp};
use crate::metrics::{scrape, Scrape};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tianji::config::{Settings, SETTINGS};
use tianji::startup::STOP_WRITES_MAX;
use yaml_rust2::{Yaml, YamlLoader};

/// What the grace period keeps beyond a stop's worst case: the process ending after its last
/// write, and the kubelet's own delay in sending SIGTERM after the preStop hook.
const GRACE_SLACK: Duration = Duration::from_secs(2);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// A YAML value as JSON (keys as strings), so the manifests read like the dashboard.
fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => json!(text.parse::<f64>().expect("a YAML real")),
        Yaml::Integer(number) => json!(number),
        Yaml::String(text) => json!(text),
        Yaml::Boolean(flag) => json!(flag),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let key = match key {
                        Yaml::String(text) => text.clone(),
                        Yaml::Integer(number) => number.to_string(),
                        other => panic!("a scalar key: {other:?}"),
                    };
                    (key, to_json(value))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML: {other:?}"),
    }
}

/// Every document of every `*.yaml` in `deploy/k8s`, by file name.
fn manifests() -> BTreeMap<String, Vec<Value>> {
    manifests_in("k8s")
}

/// Every document of every `*.yaml` in `deploy/<dir>`, by file name.
fn manifests_in(dir: &str) -> BTreeMap<String, Vec<Value>> {
    let dir = deploy_dir().join(dir);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|ext| ext != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("manifest");
        let documents = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
        files.insert(name, documents.iter().map(to_json).collect());
    }
    files
}

/// The one document of `kind` among all manifests.
fn one_of_kind<'a>(files: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
    let found: Vec<&Value> = files.values().flatten().filter(|doc| doc["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    let map = value.as_object().unwrap_or_else(|| panic!("a map: {value}"));
    map.iter()
        .map(|(key, value)| {
            (key.clone(), value.as_str().unwrap_or_else(|| panic!("{key}: quote it: {value}")).to_owned())
        })
        .collect()
}

/// The container of the Deployment (or StatefulSet).
fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn probe_paths(container: &Value) -> Vec<String> {
    ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .filter_map(|probe| container[probe]["httpGet"]["path"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_manifests_set_only_settings_the_binary_reads_with_values_it_accepts() {
    let files = manifests();
    let config_map = one_of_kind(&files, "ConfigMap");
    let secret = one_of_kind(&files, "Secret");
    let deployment = one_of_kind(&files, "Deployment");
    let container = container(deployment);

    let mut values = string_map(&config_map["data"]);
    let secret_values = string_map(&secret["stringData"]);
    for (name, value) in &secret_values {
        assert!(values.insert(name.clone(), value.clone()).is_none(), "{name} in both the ConfigMap and the Secret");
    }
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().expect("an env name").to_owned();
        let value = entry["value"].as_str().expect("a literal value (settings come from the ConfigMap)").to_owned();
        assert!(values.insert(name.clone(), value).is_none(), "{name} set twice");
    }
    for name in values.keys() {
        assert!(SETTINGS.contains(&name.as_str()), "{name} is not a setting the binary reads: {SETTINGS:?}");
    }
    for secret_name in ["TIANJI_DATABASE_URL", "TIANJI_JWT_SECRET", "TIANJI_PAYMENT_SECRET"] {
        assert!(secret_values.contains_key(secret_name), "{secret_name} belongs in the Secret");
    }
    let settings = Settings::from_values(&values).unwrap_or_else(|e| panic!("the manifests' settings: {e}"));
    assert!(settings.is_mysql(), "a deployed node keeps its data in MySQL");

    // The pod reads both, by name.
    let sources: BTreeSet<(String, String)> = container["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .flat_map(|source| {
            [("configMapRef", "ConfigMap"), ("secretRef", "Secret")].into_iter().filter_map(|(reference, kind)| {
                source[reference]["name"].as_str().map(|name| (kind.to_owned(), name.to_owned()))
            })
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [("ConfigMap", config_map), ("Secret", secret)]
        .iter()
        .map(|(kind, doc)| ((*kind).to_owned(), doc["metadata"]["name"].as_str().expect("a name").to_owned()))
        .collect();
    assert_eq!(sources, expected);

    // One port, the one the node binds, named for the probes, the Service and the scrape.
    let (port_name, port) = assert_one_port_on_bind(container, &settings);
    assert_eq!(probe_paths(container).len(), 3, "every probe is an HTTP GET");
    let service = one_of_kind(&files, "Service");
    let service_ports = service["spec"]["ports"].as_array().expect("service ports");
    for service_port in service_ports {
        let target = &service_port["targetPort"];
        assert!(target == port_name || target.as_u64() == port, "Service targetPort {target}");
    }
    let pod = &deployment["spec"]["template"];
    let selector = string_map(&service["spec"]["selector"]);
    let pod_labels = string_map(&pod["metadata"]["labels"]);
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the Service selects the pod");
    assert_eq!(string_map(&deployment["spec"]["selector"]["matchLabels"]), selector);
    let annotations = string_map(&pod["metadata"]["annotations"]);
    assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(annotations.get("prometheus.io/port").and_then(|p| p.parse::<u64>().ok()), port);
    assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"));

    // One node owns every key: never two pods at once.
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_the_pod_stops_in_its_grace_period(pod, container, &settings);

    // Everything but the Secret's example is applied by the kustomization, and it names files
    // that exist.
    let kustomization = &files["kustomization.yaml"][0];
    let listed: BTreeSet<&str> =
        kustomization["resources"].as_array().expect("resources").iter().filter_map(Value::as_str).collect();
    let expected: BTreeSet<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|name| *name != "kustomization.yaml" && *name != "secret.example.yaml")
        .collect();
    assert_eq!(listed, expected);
}

/// The graceful stop ends before the kubelet kills the pod, and the pod reserves what it
/// needs. The grace period counts from the start of the preStop pause; the node's own worst
/// case is TIANJI_SHUTDOWN_TIMEOUT for the HTTP drain plus STOP_WRITES_MAX for the writes
/// after it (src/startup.rs).
fn assert_the_pod_stops_in_its_grace_period(pod: &Value, container: &Value, settings: &Settings) {
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    let pause = container.pointer("/lifecycle/preStop/sleep/seconds").and_then(|s| s.as_u64()).unwrap_or(0);
    assert!(pause > 0, "a preStop pause lets load balancers stop routing before the drain");
    let worst_case = Duration::from_secs(pause) + settings.shutdown_timeout + STOP_WRITES_MAX;
    assert!(
        Duration::from_secs(grace) >= worst_case + GRACE_SLACK,
        "terminationGracePeriodSeconds {grace} s < preStop {pause} s + TIANJI_SHUTDOWN_TIMEOUT {:?} \
         + STOP_WRITES_MAX {STOP_WRITES_MAX:?} + {GRACE_SLACK:?} for the process to end",
        settings.shutdown_timeout
    );
    let resources = &container["resources"];
    for path in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
        assert!(resources.pointer(path).is_some(), "resources{path}");
    }
}

/// What the downward API gives a pod's `fieldRef`s in the cluster test: the first pod of the
/// StatefulSet, in the default namespace.
fn downward(field: &str, stateful_set: &Value) -> String {
    match field {
        "metadata.name" => format!("{}-0", stateful_set["metadata"]["name"].as_str().expect("a name")),
        "metadata.namespace" => "default".to_owned(),
        other => panic!("a fieldRef the test does not know: {other}"),
    }
}

/// `value` with every `$(NAME)` replaced by `NAME`'s value in `defined`, as the kubelet
/// expands an env entry from those listed before it.
fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut expanded = value.to_owned();
    for (name, replacement) in defined {
        expanded = expanded.replace(&format!("$({name})"), replacement);
    }
    assert!(!expanded.contains("$("), "{value}: a reference to a variable not defined before it");
    expanded
}

#[test]
fn the_cluster_manifests_run_three_nodes_that_advertise_their_headless_service_names() {
    let files = manifests_in("k8s-cluster");
    let one_node = manifests();
    let secret = one_of_kind(&one_node, "Secret");
    let config_map = one_of_kind(&files, "ConfigMap");
    let stateful_set = one_of_kind(&files, "StatefulSet");
    let container = container(stateful_set);
    assert!(files.values().flatten().all(|doc| doc["kind"] != "Deployment" && doc["kind"] != "Secret"));

    // Settings: the ConfigMap, the one Secret of deploy/k8s, and the pod's own env, whose
    // `$(VAR)`s are expanded from the downward API as the kubelet would.
    let mut values = string_map(&config_map["data"]);
    for (name, value) in string_map(&secret["stringData"]) {
        assert!(values.insert(name.clone(), value).is_none(), "{name} in both the ConfigMap and the Secret");
    }
    let mut defined = BTreeMap::new();
    for entry in container["env"].as_array().expect("env") {
        let name = entry["name"].as_str().expect("an env name").to_owned();
        let value = match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some(field) => downward(field, stateful_set),
            None => expand(entry["value"].as_str().expect("a literal or a fieldRef"), &defined),
        };
        if name.starts_with("TIANJI_") {
            assert!(values.insert(name.clone(), value.clone()).is_none(), "{name} set twice");
        } else {
            assert!(!entry["valueFrom"].is_null(), "{name}: only downward API values besides the settings");
        }
        defined.insert(name, value);
    }
    for name in values.keys() {
        assert!(SETTINGS.contains(&name.as_str()), "{name} is not a setting the binary reads: {SETTINGS:?}");
    }
    assert!(!values.contains_key("TIANJI_WORKER_ID"), "a cluster node's worker id comes from the membership table");
    let settings = Settings::from_values(&values).unwrap_or_else(|e| panic!("the manifests' settings: {e}"));
    assert!(settings.is_mysql(), "a cluster shares one MySQL database");
    let cluster = settings.cluster.as_ref().expect("TIANJI_ADVERTISE_URL makes each pod a cluster node");

    let sources: BTreeSet<(&str, &str)> = container["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .flat_map(|source| {
            ["configMapRef", "secretRef"]
                .into_iter()
                .filter_map(|reference| source[reference]["name"].as_str().map(|name| (reference, name)))
        })
        .collect();
    let expected = BTreeSet::from([
        ("configMapRef", config_map["metadata"]["name"].as_str().expect("a name")),
        ("secretRef", secret["metadata"]["name"].as_str().expect("a name")),
    ]);
    assert_eq!(sources, expected, "the pod reads the ConfigMap and the Secret, by name");

    // Three nodes, started and stopped together, each with a stable name under the headless
    // Service the StatefulSet governs.
    assert_eq!(stateful_set["spec"]["replicas"], 3);
    assert_eq!(stateful_set["spec"]["podManagementPolicy"], "Parallel");
    let services: Vec<&Value> = files.values().flatten().filter(|doc| doc["kind"] == "Service").collect();
    let (headless, clients): (Vec<&Value>, Vec<&Value>) =
        services.iter().partition(|service| service["spec"]["clusterIP"] == "None");
    assert_eq!((headless.len(), clients.len()), (1, 1), "a headless Service for peers, one for clients");
    let (headless, clients) = (headless[0], clients[0]);
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "peers reach a node before it is ready");
    let peers = headless["metadata"]["name"].as_str().expect("a name");
    assert_eq!(stateful_set["spec"]["serviceName"].as_str(), Some(peers));

    let advertised = reqwest::Url::parse(&cluster.advertise_url).expect("TIANJI_ADVERTISE_URL is a URL");
    let pod_name = downward("metadata.name", stateful_set);
    let namespace = downward("metadata.namespace", stateful_set);
    assert_eq!(advertised.host_str(), Some(format!("{pod_name}.{peers}.{namespace}.svc.cluster.local").as_str()));
    assert_eq!(advertised.port_or_known_default(), Some(settings.bind.port()), "the pod's DNS name is its IP");

    // Ports, probes and selectors as for one node.
    let (port_name, port) = assert_one_port_on_bind(container, &settings);
    assert_eq!(probe_paths(container), ["/healthz", "/healthz", "/readyz"], "startup, liveness, readiness");
    let pod = &stateful_set["spec"]["template"];
    let pod_labels = string_map(&pod["metadata"]["labels"]);
    for service in [headless, clients] {
        for service_port in service["spec"]["ports"].as_array().expect("service ports") {
            let target = &service_port["targetPort"];
            assert!(target == port_name || target.as_u64() == port, "Service targetPort {target}");
        }
        let selector = string_map(&service["spec"]["selector"]);
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the Service selects the pod");
    }
    let selector = string_map(&stateful_set["spec"]["selector"]["matchLabels"]);
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the StatefulSet selects its pods");
    let annotations = string_map(&pod["metadata"]["annotations"]);
    assert_eq!(annotations.get("prometheus.io/port").and_then(|p| p.parse::<u64>().ok()), port);
    assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"));

    assert_the_pod_stops_in_its_grace_period(pod, container, &settings);

    let kustomization = &files["kustomization.yaml"][0];
    let listed: BTreeSet<&str> =
        kustomization["resources"].as_array().expect("resources").iter().filter_map(Value::as_str).collect();
    let expected: BTreeSet<&str> =
        files.keys().map(String::as_str).filter(|name| *name != "kustomization.yaml").collect();
    assert_eq!(listed, expected);
}

#[actix_web::test]
async fn the_probe_and_scrape_paths_answer_200_on_a_running_node() {
    let app = spawn_app(Backend::MySql).await;
    let files = manifests();
    let deployment = one_of_kind(&files, "Deployment");
    let annotations = string_map(&deployment["spec"]["template"]["metadata"]["annotations"]);
    let mut paths = probe_paths(container(deployment));
    paths.push(annotations["prometheus.io/path"].clone());
    for path in paths {
        let response = app.client.get(app.url(&path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// The metric names a PromQL expression uses (identifiers that start with `tianji_`), each
/// with the label names it filters on.
fn metrics_in(expression: &str) -> Vec<(String, BTreeSet<String>)> {
    let bytes = expression.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut found = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let starts = expression[index..].starts_with("tianji_") && (index == 0 || !is_ident(bytes[index - 1]));
        if !starts {
            index += 1;
            continue;
        }
        let end = index + bytes[index..].iter().take_while(|b| is_ident(**b)).count();
        let mut labels = BTreeSet::new();
        if expression[end..].starts_with('{') {
            let close = end + expression[end..].find('}').expect("a closed selector");
            for matcher in expression[end + 1..close].split(',') {
                let name_end = matcher.find(['=', '!']).unwrap_or_else(|| panic!("a matcher: {matcher}"));
                labels.insert(matcher[..name_end].trim().to_owned());
            }
        }
        found.push((expression[index..end].to_owned(), labels));
        index = end;
    }
    found
}

/// The label names of every `by (...)` in an expression.
fn grouped_by(expression: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for part in expression.split("by (").skip(1) {
        let inside = &part[..part.find(')').expect("a closed by")];
        labels.extend(inside.split(',').map(|label| label.trim().to_owned()).filter(|label| !label.is_empty()));
    }
    labels
}

/// Labels Prometheus adds to every series it scrapes, or that a histogram's buckets carry.
const SCRAPE_LABELS: [&str; 3] = ["instance", "job", "le"];

/// Some traffic of a sale: an order and its payment (which opens a course), a heartbeat on that
/// course, and an order for the sold-out SKU.
async fn a_little_traffic(app: &TestApp) {
    let course = app.create_sku("metered course", 1_000, 1).await;
    let buyer = 1_000_000 + i64::from(rand::random::<u32>());
    app.bought(buyer, &[course]).await;
    let beat = json!({"course_id": course, "section_id": 1, "position_sec": 15});
    let (status, body) = app.heartbeat(buyer, beat).await;
    assert_eq!(status, 202, "{body}");
    let late = buyer + 1;
    let items = json!([{"sku_id": course, "quantity": 1}]);
    let (status, body) = status_and_json(app.place_order(late, "sold-out", items).await).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("insufficient_stock")), "{body}");
}

#[actix_web::test]
async fn every_metric_and_label_the_dashboard_queries_is_in_a_scrape() {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/tianji.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()));
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().expect("a panel id")).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let mut expressions = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("a title");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}: the dashboard's data source");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}");
        let ref_ids: BTreeSet<&str> = targets.iter().map(|t| t["refId"].as_str().expect("refId")).collect();
        assert_eq!(ref_ids.len(), targets.len(), "{title}: refIds are unique");
        expressions.extend(targets.iter().map(|t| t["expr"].as_str().expect("an expr").to_owned()));
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(query) = variable["definition"].as_str() {
            expressions.push(query.to_owned());
        }
    }

    let app = spawn_app(Backend::MySql).await;
    a_little_traffic(&app).await;
    let scrape: Scrape = scrape(&app).await;
    let names = scrape.names();
    let mut checked = BTreeSet::new();
    for expression in &expressions {
        let used = metrics_in(expression);
        assert!(!used.is_empty(), "queries no tianji metric: {expression}");
        for (metric, filtered) in used {
            assert!(names.contains(metric.as_str()), "{metric} (in {expression}) is not in a scrape: {names:?}");
            let exported = scrape.label_names(&metric);
            for label in filtered.iter().chain(&grouped_by(expression)) {
                assert!(
                    exported.contains(label.as_str()) || SCRAPE_LABELS.contains(&label.as_str()),
                    "{metric} has no label {label} (in {expression}); it has {exported:?}"
                );
            }
            checked.insert(metric);
        }
    }
    // The dashboard shows what the brief of a sale needs: one check that it was not emptied.
    for needed in [
        "tianji_placements_total",
        "tianji_http_requests_total",
        "tianji_journal_commit_seconds_bucket",
        "tianji_journal_batch_size_bucket",
        "tianji_journal_queue_depth",
        "tianji_mailbox_rejections_total",
        "tianji_actor_activations_total",
        "tianji_learning_heartbeats_total",
        "tianji_learning_rows_written_total",
        "tianji_rate_limited_total",
        "tianji_in_flight_refused_total",
    ] {
        assert!(checked.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn promql_metric_names_and_labels_are_read_from_expressions() {
    let expression = r#"sum by (route, status) (rate(tianji_http_requests_total{instance=~"$i", status=~"4..|5.."}[5m])) / sum(tianji_x_total)"#;
    let used = metrics_in(expression);
    let names: Vec<&str> = used.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["tianji_http_requests_total", "tianji_x_total"]);
    assert_eq!(used[0].1, BTreeSet::from(["instance".to_owned(), "status".to_owned()]));
    assert!(used[1].1.is_empty());
    assert_eq!(grouped_by(expression), BTreeSet::from(["route".to_owned(), "status".to_owned()]));
    assert!(metrics_in("label_values(tianji_build_info, instance)").iter().any(|(n, _)| n == "tianji_build_info"));
}

/// The container's one port, which must be `TIANJI_BIND`'s (on every interface) and the one
/// every probe targets, by name or number: its name and number.
fn assert_one_port_on_bind<'a>(container: &'a Value, settings: &Settings) -> (&'a str, Option<u64>) {
    let ports = container["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    let (port_name, port) = (ports[0]["name"].as_str().expect("a named port"), ports[0]["containerPort"].as_u64());
    assert_eq!(port, Some(u64::from(settings.bind.port())), "containerPort is TIANJI_BIND's port");
    assert!(settings.bind.ip().is_unspecified(), "TIANJI_BIND listens on every interface of the pod");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let target = &container[probe]["httpGet"]["port"];
        assert!(target == port_name || target.as_u64() == port, "{probe} port {target}");
    }
    (port_name, port)
}
