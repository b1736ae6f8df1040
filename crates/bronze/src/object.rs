//! `bronze secret ...` and `bronze config ...`: Docker's `docker secret`
//! and `docker config`, plus `update` (a new version, which rolls the
//! services that use it; Swarm's are immutable). One implementation for
//! both kinds: they differ only in that a config's data may be read back.

use std::io::Read as _;

use bronze_proto::scheduler::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{Api, Error};
use crate::json;
use crate::service::flags::parse_label;
use crate::service::inspect::Pretty;
use crate::table::Table;
use crate::units::{ago, rfc3339};

pub use bronze_scheduler::model::Kind;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create it from a file, or from stdin with `-` (docker secret|config
    /// create). At most 500 KiB. Names: a letter or digit, then letters,
    /// digits, '_', '.' or '-', at most 64 characters. Secrets are
    /// encrypted at rest and never shown again.
    Create(PutArgs),

    /// Give it (by name) a new version from a file, or from stdin with `-` (not in
    /// Swarm, whose secrets are immutable). Every service that uses it
    /// rolls to the new version, as `service update` would (its
    /// update_config); the same data as the latest version changes nothing.
    Update(PutArgs),

    /// List them (docker secret|config ls): NAME, VERSION (the latest),
    /// SERVICES using it, CREATED, UPDATED.
    #[command(visible_alias = "list")]
    Ls(LsArgs),

    /// Show them as JSON: versions, labels, sizes, the services using
    /// them; a config's data too, a secret's never (docker secret|config
    /// inspect). --pretty for text.
    Inspect(InspectArgs),

    /// Remove them (docker secret|config rm). One a service uses is
    /// refused, naming the services: remove or update them first.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Its name.
    name: String,

    /// The file holding the data, or `-` to read stdin.
    file: String,

    /// A label of this version (repeat); `update` without labels keeps the
    /// latest version's.
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print the names.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Names or ids.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,

    /// Readable text instead of JSON.
    #[arg(long)]
    pretty: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names or ids.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

pub async fn run(kind: Kind, cmd: Command, api: &mut Api) -> Result<(), Error> {
    match cmd {
        Command::Create(a) => put(api, kind, a, false).await,
        Command::Update(a) => put(api, kind, a, true).await,
        Command::Ls(a) => ls(api, kind, a).await,
        Command::Inspect(a) => inspect(api, kind, a).await,
        Command::Rm(a) => rm(api, kind, a).await,
    }
}

/// The data of `file` (`-`: stdin), refused past 500 KiB before it is sent.
fn read_data(kind: Kind, file: &str) -> Result<Vec<u8>, Error> {
    const MAX: u64 = 500 * 1024;
    let mut data = Vec::new();
    let result = if file == "-" {
        std::io::stdin().take(MAX + 1).read_to_end(&mut data)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX + 1).read_to_end(&mut data))
    };
    let what = if file == "-" { "stdin" } else { file };
    result.map_err(|e| Error::msg(format!("reading the {} from {what}: {e}", kind.as_str())))?;
    if data.len() as u64 > MAX {
        return Err(Error::msg(format!(
            "{what}: a {} is at most 500 KiB ({MAX} bytes, Swarm's limit)",
            kind.as_str()
        )));
    }
    Ok(data)
}

pub async fn create_or_update(
    api: &mut Api,
    kind: Kind,
    name: &str,
    data: Vec<u8>,
    labels: std::collections::HashMap<String, String>,
    how: Put,
) -> Result<pb::DataObject, Error> {
    let c = &mut api.client;
    let r = match (kind, how) {
        (Kind::Secret, Put::Create) => {
            c.create_secret(pb::CreateDataObjectRequest {
                name: name.to_string(),
                data,
                labels,
            })
            .await
        }
        (Kind::Config, Put::Create) => {
            c.create_config(pb::CreateDataObjectRequest {
                name: name.to_string(),
                data,
                labels,
            })
            .await
        }
        (kind, how) => {
            let req = pb::UpdateDataObjectRequest {
                name: name.to_string(),
                data,
                labels,
                create: how == Put::Upsert,
            };
            match kind {
                Kind::Secret => c.update_secret(req).await,
                Kind::Config => c.update_config(req).await,
            }
        }
    };
    r.map(tonic::Response::into_inner).map_err(|s| api.err(s))
}

/// What [`create_or_update`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Create,
    Update,
    /// Update, or create when missing (stack deploy).
    Upsert,
}

async fn put(api: &mut Api, kind: Kind, a: PutArgs, update: bool) -> Result<(), Error> {
    let data = read_data(kind, &a.file)?;
    let how = if update { Put::Update } else { Put::Create };
    let labels = a.label.into_iter().collect();
    let o = create_or_update(api, kind, &a.name, data, labels, how).await?;
    if api.json() {
        json::print(&json::data_object(&o));
    } else if update {
        let v = o.versions.last().map_or(0, |v| v.version);
        println!("{} version {v}", o.name);
        if !o.services.is_empty() {
            println!("rolling: {}", o.services.join(", "));
        }
    } else {
        println!("{}", o.id);
    }
    Ok(())
}

pub async fn list(api: &mut Api, kind: Kind) -> Result<Vec<pb::DataObject>, Error> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListDataObjectsRequest {
            page_size: 0,
            page_token: token,
        };
        let page = match kind {
            Kind::Secret => api.client.list_secrets(req).await,
            Kind::Config => api.client.list_configs(req).await,
        }
        .map_err(|s| api.err(s))?
        .into_inner();
        out.extend(page.objects);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

async fn ls(api: &mut Api, kind: Kind, a: LsArgs) -> Result<(), Error> {
    let objects = list(api, kind).await?;
    if api.json() {
        json::print(&Value::Array(
            objects.iter().map(json::data_object).collect(),
        ));
        return Ok(());
    }
    if a.quiet {
        for o in &objects {
            println!("{}", o.name);
        }
        return Ok(());
    }
    let now = std::time::SystemTime::now();
    let mut t = Table::new(&["ID", "NAME", "VERSION", "SERVICES", "CREATED", "UPDATED"]);
    for o in &objects {
        t.row(vec![
            o.id.chars().take(25).collect(),
            o.name.clone(),
            o.versions.last().map_or(0, |v| v.version).to_string(),
            o.services.join(","),
            o.created_at
                .as_ref()
                .map_or_else(String::new, |c| ago(c, now)),
            o.updated_at
                .as_ref()
                .map_or_else(String::new, |c| ago(c, now)),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

async fn get(api: &mut Api, kind: Kind, name: &str) -> Result<pb::DataObject, Error> {
    let req = pb::GetDataObjectRequest {
        name: name.to_string(),
    };
    match kind {
        Kind::Secret => api.client.get_secret(req).await,
        Kind::Config => api.client.get_config(req).await,
    }
    .map(tonic::Response::into_inner)
    .map_err(|s| api.err(s))
}

fn pretty(o: &pb::DataObject) -> String {
    let mut p = Pretty::default();
    p.kv(0, "ID", o.id.clone());
    p.kv(0, "Name", o.name.clone());
    if let Some(t) = &o.created_at {
        p.kv(0, "Created at", rfc3339(t));
    }
    if let Some(t) = &o.updated_at {
        p.kv(0, "Updated at", rfc3339(t));
    }
    p.kv(0, "Versions", "");
    for v in &o.versions {
        let when = v.created_at.as_ref().map_or_else(String::new, rfc3339);
        p.line(1, &format!("{}: {} bytes, {when}", v.version, v.size));
        let mut labels: Vec<_> = v.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            p.line(2, &format!("{k}={v}"));
        }
    }
    if !o.services.is_empty() {
        p.kv(0, "Services", o.services.join(", "));
    }
    if !o.data.is_empty() {
        p.kv(0, "Data", "");
        for line in String::from_utf8_lossy(&o.data).lines() {
            p.line(1, line);
        }
    }
    p.render()
}

async fn inspect(api: &mut Api, kind: Kind, a: InspectArgs) -> Result<(), Error> {
    let text: fn(&pb::DataObject) -> String = pretty;
    crate::client::inspect_each(
        api,
        &a.names,
        a.pretty.then_some(text),
        json::data_object,
        async |api, name| get(api, kind, name).await,
    )
    .await
}

pub async fn remove(api: &mut Api, kind: Kind, name: &str) -> Result<(), Error> {
    let req = pb::RemoveDataObjectRequest {
        name: name.to_string(),
    };
    match kind {
        Kind::Secret => api.client.remove_secret(req).await,
        Kind::Config => api.client.remove_config(req).await,
    }
    .map(|_| ())
    .map_err(|s| api.err(s))
}

async fn rm(api: &mut Api, kind: Kind, a: RmArgs) -> Result<(), Error> {
    crate::client::remove_each(api, &a.names, async |api, name| {
        remove(api, kind, name).await
    })
    .await
}
