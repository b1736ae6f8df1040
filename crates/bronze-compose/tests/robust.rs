//! Damaged files never panic the loader: every fixture, truncated at
//! every character and with YAML's and interpolation's special characters
//! put in at many places, loads or fails with an error that names the
//! file and a line inside it. Deterministic, so a failure reproduces.

use std::path::Path;

use bronze_compose::{LoadOptions, load};

const FIXTURES: &[&str] = &[
    "seeds/stack.yml",
    "syntax/short.yml",
    "syntax/long.yml",
    "anchors/stack.yml",
    "interp/stack.yml",
    "merge/base.yml",
    "merge/override.yml",
];

/// What is put in at each place.
const INSERTS: &[&str] = &[
    ":", "-", " ", "\n", "\t", "[", "]", "{", "}", "&a ", "*a", "<<: *a\n", "$", "${", "${X:?",
    "'", "\"", "#", "!!str ", "|\n", "? ", "---\n", "\u{feff}", "é", "0x", "-1",
];

struct Checker {
    dir: tempfile::TempDir,
    loads: usize,
    errors: usize,
}

impl Checker {
    fn check(&mut self, text: &str) {
        let file = self.dir.path().join("stack.yml");
        std::fs::write(&file, text).expect("write");
        let opts = LoadOptions {
            files: vec![file.clone()],
            env: [("TAG", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            project_name: "s".into(),
        };
        self.loads += 1;
        match load(&opts) {
            Ok(p) => {
                let _ = p.to_yaml();
            }
            Err(e) => {
                self.errors += 1;
                assert_eq!(e.file, file, "{e}\n---\n{text}");
                let lines = text.lines().count().max(1);
                assert!(e.line <= lines + 1, "{e}: line past the end\n---\n{text}");
                assert!(!e.message.is_empty());
            }
        }
    }
}

#[test]
fn truncated_and_mutated_fixtures_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut c = Checker {
        dir: tempfile::tempdir().expect("tempdir"),
        loads: 0,
        errors: 0,
    };
    for name in FIXTURES {
        let text = std::fs::read_to_string(root.join(name)).expect("fixture");
        let cuts: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        for &cut in &cuts {
            c.check(&text[..cut]);
        }
        // Each insert at every 19th place (a different phase per insert),
        // and each character removed at every 5th.
        for (k, insert) in INSERTS.iter().enumerate() {
            for &at in cuts.iter().skip(k % 19).step_by(19) {
                c.check(&format!("{}{insert}{}", &text[..at], &text[at..]));
            }
        }
        for w in cuts.windows(2).step_by(5) {
            c.check(&format!("{}{}", &text[..w[0]], &text[w[1]..]));
        }
    }
    assert!(c.loads > 10_000, "{} loads", c.loads);
    // Most damage is caught; some (a removed comment character) is not.
    assert!(c.errors > c.loads / 2, "{} of {}", c.errors, c.loads);
}
