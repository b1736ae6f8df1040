//! Bad input: one error naming the file, the line and the dotted key; and
//! the warnings for keys Bronze does not honour.

use std::path::{Path, PathBuf};

use bronze_compose::{Error, LoadOptions, Project, load};

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        Dir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn load(&self, files: &[&str], env: &[(&str, &str)]) -> Result<Project, Error> {
        load(&LoadOptions {
            files: files.iter().map(|f| self.path(f)).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            project_name: "s".into(),
        })
    }
}

/// Loads `stack.yml` alone and returns its error.
fn error(text: &str) -> (Dir, Error) {
    let d = Dir::new(&[("stack.yml", text)]);
    let e = match d.load(&["stack.yml"], &[]) {
        Ok(p) => panic!("loaded: {p:?}"),
        Err(e) => e,
    };
    (d, e)
}

#[track_caller]
fn assert_error(text: &str, line: usize, column: usize, key: &str, message: &str) {
    let (d, e) = error(text);
    assert_eq!(e.file, d.path("stack.yml"), "{e}");
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (line, column, key),
        "{e}"
    );
    assert!(
        e.message.contains(message),
        "{e}\n  does not contain {message:?}"
    );
}

#[test]
fn display_names_file_line_column_and_key() {
    let (d, e) = error("services:\n  web:\n    image: x\n    deploy:\n      replicas: three\n");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:5:17: services.web.deploy.replicas: expected an integer, found \"three\"",
            d.path("stack.yml").display()
        )
    );
    let as_std: &dyn std::error::Error = &e;
    assert!(as_std.to_string().contains("replicas"));
}

#[test]
fn malformed_yaml() {
    assert_error(
        "services:\n  web:\n    image: x\n     ports: [80\n",
        4,
        11,
        "",
        "invalid YAML",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    image: y\n",
        4,
        5,
        "",
        "already defined",
    );
    assert_error("- a\n- b\n", 1, 1, "", "a compose file is a mapping");
    assert_error("", 1, 1, "", "a compose file is a mapping");
    assert_error(
        "services: {}\n---\nservices: {}\n",
        2,
        1,
        "",
        "one YAML document",
    );
}

#[test]
fn wrong_types() {
    let svc = |body: &str| format!("services:\n  web:\n    image: x\n{body}");
    assert_error(
        &svc("    stop_grace_period: soon\n"),
        4,
        24,
        "services.web.stop_grace_period",
        "expected a duration like 10s or 1m30s, found \"soon\"",
    );
    assert_error(
        &svc("    healthcheck:\n      interval: 10\n"),
        5,
        17,
        "services.web.healthcheck.interval",
        "expected a duration like 10s or 1m30s, found \"10\"",
    );
    assert_error(
        &svc("    deploy:\n      resources:\n        limits:\n          memory: lots\n"),
        7,
        19,
        "services.web.deploy.resources.limits.memory",
        "expected a size like 512M or 1G, found \"lots\"",
    );
    assert_error(
        &svc("    deploy:\n      resources:\n        limits:\n          cpus: half\n"),
        7,
        17,
        "services.web.deploy.resources.limits.cpus",
        "expected a number of CPUs like 0.5 or 2, found \"half\"",
    );
    assert_error(
        &svc("    ports:\n      - \"80:http\"\n"),
        5,
        9,
        "services.web.ports[0]",
        "\"http\" is not a port",
    );
    assert_error(
        &svc("    ports:\n      - \"8000-8002:80-81\"\n"),
        5,
        9,
        "services.web.ports[0]",
        "ranges differ in length",
    );
    assert_error(
        &svc("    ports:\n      - target: 70000\n"),
        5,
        17,
        "services.web.ports[0].target",
        "expected a port (1-65535), found 70000",
    );
    assert_error(
        &svc("    environment: FOO=bar\n"),
        4,
        18,
        "services.web.environment",
        "expected a mapping, found \"FOO=bar\"",
    );
    assert_error(
        &svc("    deploy:\n      update_config:\n        order: sideways\n"),
        6,
        16,
        "services.web.deploy.update_config.order",
        "expected one of stop-first, start-first, found \"sideways\"",
    );
    assert_error(
        &svc("    deploy:\n      mode: replicated-job\n"),
        5,
        13,
        "services.web.deploy.mode",
        "replicated-job and global-job are unsupported",
    );
    assert_error(
        &svc("    deploy:\n      mode: global\n      replicas: 2\n"),
        6,
        17,
        "services.web.deploy.replicas",
        "only be used with mode: replicated",
    );
}

#[test]
fn unknown_keys() {
    assert_error(
        "services:\n  web:\n    image: x\nservice:\n  db: {}\n",
        4,
        1,
        "service",
        "unknown top-level key",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    imagee: y\n",
        4,
        5,
        "services.web.imagee",
        "unknown key \"imagee\" (additional property imagee is not allowed here)",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    deploy:\n      replica: 2\n",
        5,
        7,
        "services.web.deploy.replica",
        "unknown key",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    extends: base\n",
        4,
        5,
        "services.web.extends",
        "extends is not supported",
    );
}

#[test]
fn a_service_needs_an_image() {
    assert_error(
        "services:\n  web:\n    image: x\n  worker:\n    command: run\n",
        4,
        3,
        "services.worker",
        "a service needs an image",
    );
}

#[test]
fn depends_on_cycles_and_undefined_services() {
    assert_error(
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on:\n      c:\n        condition: service_healthy\n  c:\n    image: x\n    depends_on: [a]\n",
        12,
        18,
        "services.c.depends_on.a",
        "depends_on cycle: a -> b -> c -> a",
    );
    assert_error(
        "services:\n  a:\n    image: x\n    depends_on:\n      - a\n",
        5,
        9,
        "services.a.depends_on.a",
        "depends_on cycle: a -> a",
    );
    assert_error(
        "services:\n  a:\n    image: x\n    depends_on:\n      - db\n",
        5,
        9,
        "services.a.depends_on.db",
        "a depends on undefined service \"db\"",
    );
}

#[test]
fn undefined_objects() {
    let svc = |body: &str| format!("services:\n  web:\n    image: x\n{body}");
    assert_error(
        &svc("    secrets:\n      - db_password\n"),
        5,
        9,
        "services.web.secrets[0]",
        "undefined secret \"db_password\"",
    );
    assert_error(
        &svc("    configs:\n      - source: nginx\n"),
        5,
        9,
        "services.web.configs[0]",
        "undefined config \"nginx\"",
    );
    assert_error(
        &svc("    volumes:\n      - data:/data\n"),
        5,
        9,
        "services.web.volumes[0]",
        "undefined volume \"data\"",
    );
    assert_error(
        &svc("    networks:\n      - front\n"),
        5,
        9,
        "services.web.networks.front",
        "undefined network \"front\"",
    );
    assert_error(
        "secrets:\n  key: {}\nservices:\n  web:\n    image: x\n",
        2,
        8,
        "secrets.key",
        "expected file: (a path) or external: true",
    );
}

#[test]
fn required_variables() {
    let text = "services:\n  web:\n    image: x\n    environment:\n      DB: ${DB_HOST:?set DB_HOST to the database}\n      OPT: ${OPT?OPT is required}\n";
    let d = Dir::new(&[("stack.yml", text)]);
    let e = d.load(&["stack.yml"], &[]).expect_err("DB_HOST unset");
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (5, 11, "services.web.environment.DB")
    );
    assert_eq!(
        e.message,
        "required variable DB_HOST is missing a value: set DB_HOST to the database"
    );
    let e = d
        .load(&["stack.yml"], &[("DB_HOST", "")])
        .expect_err("DB_HOST empty");
    assert_eq!(e.line, 5);
    let e = d
        .load(&["stack.yml"], &[("DB_HOST", "db")])
        .expect_err("OPT unset");
    assert_eq!(
        (e.line, e.key.as_str(), e.message.as_str()),
        (
            6,
            "services.web.environment.OPT",
            "required variable OPT is not set: OPT is required"
        )
    );
    // Set, even empty, satisfies `?`.
    let p = d
        .load(&["stack.yml"], &[("DB_HOST", "db"), ("OPT", "")])
        .expect("loads");
    assert_eq!(p.services["web"].environment["OPT"].as_deref(), Some(""));
    assert_error(
        "services:\n  web:\n    image: \"costs 5$\"\n",
        3,
        12,
        "services.web.image",
        "invalid interpolation format",
    );
}

#[test]
fn errors_in_a_later_file_name_that_file() {
    let d = Dir::new(&[
        ("base.yml", "services:\n  web:\n    image: x\n"),
        (
            "prod.yml",
            "services:\n  web:\n    deploy:\n      replicas: many\n",
        ),
        ("bad.yml", "services:\n  web:\n    oops: 1\n"),
    ]);
    let e = d
        .load(&["base.yml", "prod.yml"], &[])
        .expect_err("bad replicas");
    assert_eq!(e.file, d.path("prod.yml"));
    assert_eq!(
        (e.line, e.key.as_str()),
        (4, "services.web.deploy.replicas")
    );
    let e = d
        .load(&["base.yml", "bad.yml"], &[])
        .expect_err("unknown key");
    assert_eq!(e.file, d.path("bad.yml"));
    assert_eq!((e.line, e.key.as_str()), (3, "services.web.oops"));
    // And an override can give the image the base lacks.
    let d = Dir::new(&[
        ("base.yml", "services:\n  web:\n    command: run\n"),
        ("img.yml", "services:\n  web:\n    image: x\n"),
    ]);
    assert!(d.load(&["base.yml", "img.yml"], &[]).is_ok());
    let e = d.load(&["base.yml"], &[]).expect_err("no image");
    assert_eq!(e.file, d.path("base.yml"));
}

#[test]
fn unreadable_files_and_dotenv() {
    let d = Dir::new(&[("stack.yml", "services:\n  web:\n    image: x\n")]);
    let e = d.load(&["missing.yml"], &[]).expect_err("missing");
    assert_eq!((e.file, e.line), (d.path("missing.yml"), 0));
    let d = Dir::new(&[
        ("stack.yml", "services:\n  web:\n    image: x\n"),
        (".env", "A=1\nnot a line\n"),
    ]);
    let e = d.load(&["stack.yml"], &[]).expect_err("bad .env");
    assert_eq!((e.file, e.line), (d.path(".env"), 2));
    let d = Dir::new(&[(
        "stack.yml",
        "services:\n  web:\n    image: x\n    env_file: nope.env\n",
    )]);
    let e = d.load(&["stack.yml"], &[]).expect_err("missing env_file");
    assert_eq!((e.line, e.key.as_str()), (4, "services.web.env_file[0]"));
    assert!(e.message.contains("nope.env"), "{e}");
    let e = load(&LoadOptions::default()).expect_err("no files");
    assert_eq!(e.message, "no compose file given");
}

#[test]
fn unhonoured_keys_are_warned_once_per_key_per_file() {
    let base = "services:\n  web:\n    image: x\n    build: .\n    container_name: w\n  api:\n    image: y\n    build: ./api\n    logging:\n      driver: syslog\n    deploy:\n      resources:\n        reservations:\n          devices: []\n";
    let over = "services:\n  web:\n    build: .\n    privileged: true\n";
    let d = Dir::new(&[("stack.yml", base), ("over.yml", over)]);
    let p = d.load(&["stack.yml", "over.yml"], &[]).expect("loads");
    let got: Vec<(PathBuf, usize, String)> = p
        .warnings
        .iter()
        .map(|w| (w.file.clone(), w.line, w.key.clone()))
        .collect();
    let f = |n: &str| d.path(n);
    assert_eq!(
        got,
        [
            (f("stack.yml"), 4, "services.web.build".to_string()),
            (f("stack.yml"), 5, "services.web.container_name".into()),
            (f("stack.yml"), 9, "services.api.logging".into()),
            (
                f("stack.yml"),
                14,
                "services.api.deploy.resources.reservations.devices".into()
            ),
            (f("over.yml"), 3, "services.web.build".into()),
            (f("over.yml"), 4, "services.web.privileged".into()),
        ]
    );
    let w = p.warnings[0].to_string();
    assert_eq!(
        w,
        format!(
            "{}:4: services.web.build: not supported by Bronze stacks (stacks deploy images; \
             build and push first); ignored",
            Path::new(&f("stack.yml")).display()
        )
    );
}
