//! Loading good files: every key in both syntaxes, the seeds' stack file,
//! anchors and extension fields, interpolation with `.env`, and merging
//! two files (its canonical output compared to a fixture).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bronze_compose::{
    Condition, LoadOptions, Mode, Mount, MountKind, Port, Project, RestartCondition,
    ServiceObjectRef, load,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn opts(files: &[&str], env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        files: files.iter().map(|f| fixtures().join(f)).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        project_name: "seeds".into(),
    }
}

fn load_ok(files: &[&str], env: &[(&str, &str)]) -> Project {
    match load(&opts(files, env)) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn port(target: u16, published: Option<u16>, protocol: &str, mode: &str) -> Port {
    Port {
        target,
        published,
        protocol: protocol.into(),
        mode: mode.into(),
    }
}

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

#[test]
fn seeds_stack_file() {
    let p = load_ok(&["seeds/stack.yml"], &[]);
    assert_eq!(p.name, "seeds");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let user = &p.services["user"];
    assert_eq!(user.image, "registry.example:5000/seeds/user:1.4.2");
    assert_eq!(user.networks, ["backend"]);
    let d = &user.deploy;
    assert_eq!(d.mode, Mode::Replicated);
    assert_eq!(d.replicas, Some(2));
    let rp = d.restart_policy.as_ref().expect("restart_policy");
    assert_eq!(rp.condition, RestartCondition::OnFailure);
    assert_eq!(rp.delay, secs(5));
    assert_eq!(rp.max_attempts, Some(3));
    assert_eq!(rp.window, secs(120));
    let u = d.update_config.as_ref().expect("update_config");
    assert_eq!(u.parallelism, Some(1));
    assert_eq!(u.delay, secs(10));
    assert_eq!(u.order.as_deref(), Some("start-first"));
    assert_eq!(u.failure_action.as_deref(), Some("rollback"));
    assert_eq!(u.monitor, secs(30));
    assert_eq!(u.max_failure_ratio, Some(0.2));
    let r = d.rollback_config.as_ref().expect("rollback_config");
    assert_eq!(
        (r.parallelism, r.order.as_deref()),
        (Some(2), Some("stop-first"))
    );
    assert_eq!(d.resources.limits.nano_cpus, Some(500_000_000));
    assert_eq!(d.resources.limits.memory, Some(512 << 20));
    assert_eq!(d.resources.reservations.memory, Some(256 << 20));
    assert_eq!(
        d.labels["traefik.frontend.rule"],
        "Host:a.example;PathPrefixStrip:/v2/user"
    );
    assert_eq!(d.labels["traefik.port"], "8080");
    assert_eq!(d.labels["traefik.weight"], "10");
    assert_eq!(d.labels["traefik.enable"], "true");
    assert_eq!(d.placement.constraints, ["node.role == worker"]);
    let db = &p.services["db"];
    assert_eq!(
        db.volumes,
        [Mount {
            kind: MountKind::Volume,
            source: Some("dbdata".into()),
            target: "/var/lib/postgresql/data".into(),
            read_only: false,
            tmpfs_size: None,
        }]
    );
    assert_eq!(db.deploy.placement.constraints, ["node.labels.db == true"]);
    assert_eq!(db.deploy.replicas, None);
    assert_eq!(p.networks["backend"].driver.as_deref(), Some("overlay"));
    assert!(p.volumes.contains_key("dbdata"));
}

#[test]
fn short_syntax_of_every_key() {
    let dir = fixtures().join("syntax");
    let p = load_ok(&["syntax/short.yml"], &[]);
    let web = &p.services["web"];
    assert_eq!(
        web.command,
        Some(strings(&[
            "sh",
            "-c",
            "echo \"hi there\" && nginx -g \"daemon off;\""
        ]))
    );
    assert_eq!(
        web.entrypoint,
        Some(strings(&["/docker-entrypoint.sh", "--verbose"]))
    );
    let env: BTreeMap<String, Option<String>> = [
        ("MODE", Some("prod")),
        ("EMPTY", Some("")),
        ("FROM_HOST", None),
        ("FROM_FILE", Some("yes")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
    .collect();
    assert_eq!(web.environment, env, "environment wins over env_file");
    assert_eq!(
        web.ports,
        [
            port(80, None, "tcp", "ingress"),
            port(80, Some(8080), "tcp", "ingress"),
            port(90, Some(8000), "tcp", "ingress"),
            port(91, Some(8001), "tcp", "ingress"),
            port(9090, Some(9090), "tcp", "ingress"),
            port(53, Some(53), "udp", "ingress"),
            port(7000, None, "tcp", "ingress"),
        ]
    );
    let bind = |src: &str, target: &str, ro: bool| Mount {
        kind: MountKind::Bind,
        source: Some(src.into()),
        target: target.into(),
        read_only: ro,
        tmpfs_size: None,
    };
    assert_eq!(
        web.volumes,
        [
            Mount {
                kind: MountKind::Volume,
                source: Some("data".into()),
                target: "/data".into(),
                read_only: true,
                tmpfs_size: None,
            },
            bind(
                &dir.join("conf").to_string_lossy(),
                "/etc/nginx/conf.d",
                false
            ),
            bind("/var/log/web", "/var/log/nginx", false),
            Mount {
                kind: MountKind::Volume,
                source: None,
                target: "/cache".into(),
                read_only: false,
                tmpfs_size: None,
            },
        ]
    );
    assert_eq!(web.labels["com.example.team"], "web");
    assert_eq!(web.labels["com.example.flag"], "");
    let h = web.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(
        h.test,
        ["CMD-SHELL", "curl -fsS http://localhost/ || exit 1"]
    );
    assert_eq!(
        (h.interval, h.timeout, h.start_period, h.retries, h.disable),
        (secs(30), secs(5), secs(90), Some(3), false)
    );
    assert_eq!(web.stop_grace_period, secs(90));
    assert_eq!(web.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(web.user.as_deref(), Some("101:101"));
    assert_eq!(web.working_dir.as_deref(), Some("/srv"));
    assert_eq!(web.hostname.as_deref(), Some("web-host"));
    assert_eq!(
        web.extra_hosts,
        ["db.local:10.0.0.5", "cache.local:10.0.0.6"]
    );
    let short_ref = |s: &str| ServiceObjectRef {
        source: s.into(),
        target: None,
        uid: None,
        gid: None,
        mode: None,
    };
    assert_eq!(web.secrets, [short_ref("tls_key")]);
    assert_eq!(web.configs, [short_ref("nginx_conf")]);
    assert_eq!(
        web.depends_on.iter().collect::<Vec<_>>(),
        [(&"api".to_string(), &Condition::Started)]
    );
    assert_eq!(web.networks, ["front"]);
    assert_eq!(web.deploy.mode, Mode::Global);
    assert_eq!(
        web.deploy.placement.preferences,
        ["spread=node.labels.zone"]
    );
    assert_eq!(web.deploy.placement.max_replicas_per_node, Some(1));
    assert_eq!(web.deploy.labels["com.example.deploy"], "yes");
    assert_eq!(web.deploy.endpoint_mode.as_deref(), Some("dnsrr"));

    let api = &p.services["api"];
    assert_eq!(api.command, Some(strings(&["./api", "--port", "8080"])));
    assert_eq!(api.entrypoint, Some(strings(&["/tini", "--"])));
    assert!(api.healthcheck.as_ref().expect("healthcheck").disable);

    assert_eq!(
        p.secrets["tls_key"].file.as_deref(),
        Some(dir.join("secrets/tls.key").as_path())
    );
    assert!(p.configs["nginx_conf"].external);

    // The host address of "127.0.0.1:9090:9090" is not honoured: warned.
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    let w = &p.warnings[0];
    assert_eq!(w.file, fixtures().join("syntax/short.yml"));
    assert_eq!((w.line, w.key.as_str()), (16, "services.web.ports[3]"));
    assert!(w.message.contains("127.0.0.1"), "{w}");
}

#[test]
fn long_syntax_of_every_key() {
    let dir = fixtures().join("syntax");
    let p = load_ok(&["syntax/long.yml"], &[]);
    let web = &p.services["web"];
    let env: BTreeMap<String, Option<String>> = [
        ("MODE", Some("prod")),
        ("RETRIES", Some("3")),
        ("DEBUG", Some("false")),
        ("UNSET", None),
        ("FROM_FILE", Some("yes")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
    .collect();
    assert_eq!(web.environment, env);
    assert_eq!(
        web.ports,
        [
            port(80, Some(8080), "tcp", "host"),
            port(53, None, "udp", "ingress"),
        ]
    );
    assert_eq!(
        web.volumes,
        [
            Mount {
                kind: MountKind::Volume,
                source: Some("data".into()),
                target: "/data".into(),
                read_only: true,
                tmpfs_size: None,
            },
            Mount {
                kind: MountKind::Bind,
                source: Some(dir.join("conf").to_string_lossy().into_owned()),
                target: "/etc/conf".into(),
                read_only: false,
                tmpfs_size: None,
            },
            Mount {
                kind: MountKind::Tmpfs,
                source: None,
                target: "/tmp".into(),
                read_only: false,
                tmpfs_size: Some(64 << 20),
            },
        ]
    );
    assert_eq!(web.labels["com.example.count"], "2");
    let h = web.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(h.test, ["CMD", "curl", "-f", "http://localhost/"]);
    assert_eq!(
        (h.interval, h.retries, h.disable),
        (secs(10), Some(5), false)
    );
    assert_eq!(web.extra_hosts, ["db.local:10.0.0.5"]);
    assert_eq!(
        web.secrets,
        [ServiceObjectRef {
            source: "tls_key".into(),
            target: Some("/etc/tls/key.pem".into()),
            uid: Some("101".into()),
            gid: Some("101".into()),
            mode: Some(0o440),
        }]
    );
    assert_eq!(web.configs[0].mode, Some(0o644));
    assert_eq!(web.depends_on["api"], Condition::Healthy);
    assert_eq!(web.depends_on["db"], Condition::CompletedSuccessfully);
    assert_eq!(web.depends_on["cache"], Condition::Started);
    assert_eq!(web.networks, ["front", "back"]);
    let d = &web.deploy;
    assert_eq!((d.mode, d.replicas), (Mode::Replicated, Some(3)));
    assert_eq!(d.resources.limits.nano_cpus, Some(1_500_000_000));
    assert_eq!(d.resources.limits.memory, Some(1 << 30));
    assert_eq!(d.resources.limits.pids, Some(100));
    assert_eq!(d.resources.reservations.nano_cpus, Some(250_000_000));
    assert_eq!(d.resources.reservations.memory, Some(1 << 30));
    assert_eq!(
        d.restart_policy.as_ref().map(|r| r.condition),
        Some(RestartCondition::Any)
    );
    let u = d.update_config.as_ref().expect("update_config");
    assert_eq!(
        (u.parallelism, u.failure_action.as_deref()),
        (Some(2), Some("pause"))
    );
    assert_eq!(
        d.labels["traefik.http.routers.web.rule"],
        "Host(`a.example`) && PathPrefix(`/v2`)"
    );
    assert_eq!(d.endpoint_mode.as_deref(), Some("vip"));

    let data = &p.volumes["data"];
    assert_eq!(data.driver.as_deref(), Some("local"));
    assert_eq!(data.driver_opts["type"], "nfs");
    assert_eq!(data.labels["tier"], "data");
    assert!(p.networks["front"].attachable);
    let back = &p.networks["back"];
    assert!(back.external);
    assert_eq!(back.name.as_deref(), Some("shared_back"));
    let key = &p.secrets["tls_key"];
    assert!(key.external && key.file.is_none());
    assert_eq!(key.name.as_deref(), Some("prod_tls_key"));
    let conf = &p.configs["nginx_conf"];
    assert_eq!(conf.file.as_deref(), Some(dir.join("nginx.conf").as_path()));
    assert_eq!(conf.labels["kind"], "proxy");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn anchors_merge_keys_and_extension_fields() {
    let p = load_ok(&["anchors/stack.yml"], &[]);
    let a = &p.services["a"];
    assert_eq!(a.environment["LOG_LEVEL"].as_deref(), Some("info"));
    assert_eq!(a.environment["REGION"].as_deref(), Some("us"));
    assert_eq!(a.deploy.replicas, Some(2));
    assert_eq!(
        a.deploy.restart_policy.as_ref().map(|r| r.condition),
        Some(RestartCondition::OnFailure)
    );
    let u = a.deploy.update_config.as_ref().expect("update_config");
    assert_eq!(u.order.as_deref(), Some("start-first"));
    assert_eq!(u.failure_action.as_deref(), Some("rollback"));
    let b = &p.services["b"];
    assert_eq!(b.environment["REGION"].as_deref(), Some("eu"));
    // A key written beside `<<` replaces the merged one whole.
    let u = b.deploy.update_config.as_ref().expect("update_config");
    assert_eq!(u.order.as_deref(), Some("stop-first"));
    assert_eq!(u.failure_action, None);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn interpolation_forms_and_dotenv() {
    let p = load_ok(
        &["interp/stack.yml"],
        &[
            ("TAG", "1.2"),
            ("BOTH", "from-env"),
            ("EMPTY", ""),
            ("REGISTRY", ""),
        ],
    );
    let app = &p.services["app"];
    assert_eq!(app.image, "docker.io/example/app:1.2");
    let env = |k: &str| app.environment[k].clone().unwrap_or_default();
    assert_eq!(env("FROM_DOTENV"), "from-dotenv");
    assert_eq!(env("SHADOWED"), "from-env", "the process environment wins");
    assert_eq!(env("ALT"), "tagged");
    assert_eq!(env("ALT_UNSET"), "");
    assert_eq!(env("DASH"), "");
    assert_eq!(env("COLON_DASH"), "was-empty");
    assert_eq!(env("NESTED"), "from-dotenv-x");
    assert_eq!(env("DOLLARS"), "cost: $5 and ${NOT_A_VAR}");
    assert_eq!(env("BARE"), "1.2");
    assert_eq!(env("UNSET_VAR"), "");
    assert_eq!(env("REQUIRED"), "1.2");
    assert_eq!(env("QUOTED"), "a # b");
    assert_eq!(app.deploy.replicas, Some(4), "from .env's export line");
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    let w = &p.warnings[0];
    assert_eq!(
        w.to_string(),
        format!(
            "{}:14: services.app.environment.UNSET_VAR: The NOPE variable is not set. \
             Defaulting to a blank string.",
            fixtures().join("interp/stack.yml").display()
        )
    );
}

#[test]
fn merged_files_print_the_fixture() {
    let p = load_ok(&["merge/base.yml", "merge/override.yml"], &[]);
    let web = &p.services["web"];
    assert_eq!(web.image, "example/web:2");
    assert_eq!(web.command, Some(strings(&["serve", "--port", "8080"])));
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"].as_deref(), Some("3"));
    assert_eq!(web.environment["C"].as_deref(), Some("4"));
    assert_eq!(web.labels.len(), 2);
    assert_eq!(
        web.ports,
        [
            port(80, Some(80), "tcp", "ingress"),
            port(443, Some(443), "tcp", "host"),
            port(8443, Some(8443), "tcp", "ingress"),
        ]
    );
    assert_eq!(web.volumes.len(), 2);
    assert_eq!(web.volumes[0].kind, MountKind::Bind);
    assert_eq!(web.volumes[0].source.as_deref(), Some("/srv/data"));
    assert_eq!(web.extra_hosts, ["db:10.0.0.2", "cache:10.0.0.3"]);
    assert_eq!(web.secrets.len(), 1);
    assert_eq!(web.secrets[0].source, "key2");
    assert_eq!(web.depends_on.len(), 2);
    assert_eq!(web.depends_on["cache"], Condition::Healthy);
    assert_eq!(
        web.healthcheck.as_ref().map(|h| h.test.clone()),
        Some(strings(&["CMD-SHELL", "curl -f localhost"]))
    );
    assert_eq!(web.healthcheck.as_ref().and_then(|h| h.interval), secs(10));
    assert_eq!(web.deploy.replicas, Some(3));
    assert_eq!(web.deploy.labels.len(), 2);
    assert_eq!(
        web.deploy.placement.constraints,
        ["node.role == worker", "node.labels.zone == eu"]
    );
    let u = web.deploy.update_config.as_ref().expect("update_config");
    assert_eq!(
        (u.parallelism, u.order.as_deref()),
        (Some(1), Some("start-first"))
    );

    let expected =
        std::fs::read_to_string(fixtures().join("merge/expected.yml")).expect("merge/expected.yml");
    assert_eq!(p.to_yaml(), expected);
}

#[test]
fn canonical_output_loads_back_to_the_same_project() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Keys and values that need quoting, `$` escaping, and a quoted "<<".
    let odd = "services:\n  w:\n    image: x\n    labels:\n      'a$b': '$$x'\n      '<<': 'y: z'\n      \"t\": 'true'\n    environment:\n      - 'Q=\"q\" \\ back # not a comment'\n      - 'N=0x10'\n      - 'E='\n";
    std::fs::write(dir.path().join("odd.yml"), odd).expect("write");
    let p = load(&LoadOptions {
        files: vec![dir.path().join("odd.yml")],
        ..LoadOptions::default()
    })
    .expect("odd.yml loads");
    let w = &p.services["w"];
    assert_eq!(w.labels["a$b"], "$x");
    assert_eq!(w.labels["<<"], "y: z");
    assert_eq!(w.labels["t"], "true");
    assert_eq!(
        w.environment["Q"].as_deref(),
        Some("\"q\" \\ back # not a comment")
    );
    let out = dir.path().join("odd-out.yml");
    std::fs::write(&out, p.to_yaml()).expect("write");
    let again = load(&LoadOptions {
        files: vec![out],
        ..LoadOptions::default()
    })
    .expect("printed odd.yml loads");
    assert_eq!(again, p, "{}", p.to_yaml());
    for files in [
        &["seeds/stack.yml"][..],
        &["syntax/short.yml"],
        &["syntax/long.yml"],
        &["anchors/stack.yml"],
        &["merge/base.yml", "merge/override.yml"],
    ] {
        let mut p = load_ok(files, &[]);
        let out = dir.path().join("out.yml");
        std::fs::write(&out, p.to_yaml()).expect("write");
        let mut again = match load(&LoadOptions {
            files: vec![out],
            env: BTreeMap::new(),
            project_name: "seeds".into(),
        }) {
            Ok(p) => p,
            Err(e) => panic!("{files:?}: {e}\n{}", p.to_yaml()),
        };
        // Warnings point into different files; the rest is the same.
        p.warnings.clear();
        again.warnings.clear();
        assert_eq!(again, p, "{files:?}");
    }
}

#[test]
fn relative_paths_follow_the_file_that_wrote_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("prod");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(
        dir.path().join("stack.yml"),
        "services:\n  web:\n    image: x\n    volumes:\n      - ./static:/static\n    networks: [front]\n    labels:\n      \"${NOT_INTERPOLATED}\": ${FROM_DOTENV}\nnetworks:\n  front: {}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join(".env"), "FROM_DOTENV=first-dir\n").expect("write");
    // A .env beside a later file is not read.
    std::fs::write(sub.join(".env"), "FROM_DOTENV=second-dir\n").expect("write");
    std::fs::write(sub.join("web.env"), "LEVEL=debug\n").expect("write");
    std::fs::write(
        sub.join("prod.yml"),
        "services:\n  web:\n    env_file: web.env\n    volumes:\n      - ./certs:/certs:ro\n    networks:\n      back: {}\nnetworks:\n  back: {}\nsecrets:\n  key:\n    file: ../key.pem\n",
    )
    .expect("write");
    let p = load(&LoadOptions {
        files: vec![dir.path().join("stack.yml"), sub.join("prod.yml")],
        env: BTreeMap::new(),
        project_name: "s".into(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let web = &p.services["web"];
    let sources: Vec<&str> = web
        .volumes
        .iter()
        .filter_map(|m| m.source.as_deref())
        .collect();
    let static_dir = dir.path().join("static");
    let certs_dir = sub.join("certs");
    assert_eq!(
        sources,
        [
            static_dir.to_string_lossy().as_ref(),
            certs_dir.to_string_lossy().as_ref()
        ]
    );
    assert!(web.volumes[1].read_only);
    assert_eq!(web.environment["LEVEL"].as_deref(), Some("debug"));
    assert_eq!(web.networks, ["front", "back"]);
    assert_eq!(web.labels["${NOT_INTERPOLATED}"], "first-dir");
    assert_eq!(
        p.secrets["key"].file.as_deref(),
        Some(dir.path().join("key.pem").as_path())
    );
}
