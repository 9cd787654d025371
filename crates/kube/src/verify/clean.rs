//! `verify --clean`: deletes what runs left behind (a process killed before its own
//! clean-up): Jobs labelled [`MANAGED_BY_LABEL`]`=`[`MANAGED_BY`] and pods carrying
//! [`RUN_LABEL`], once their [`EXPIRES_ANNOTATION`] has passed (or always, with
//! `include_unexpired`), so a run still going on elsewhere is left alone.

use std::time::SystemTime;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;

use super::job::{EXPIRES_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL, expired};
use super::{Namespaces, VerifyError, api_error, describe, is_not_found};
use crate::Client;

/// What `--clean` removes.
#[derive(Debug, Clone)]
pub struct CleanConfig {
    /// Where to look.
    pub namespaces: Namespaces,
    /// Also objects whose expiry has not passed (a run may still be going on).
    pub include_unexpired: bool,
}

/// What `--clean` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanReport {
    /// Jobs deleted (`namespace/name`).
    pub jobs_deleted: Vec<String>,
    /// Pods deleted (`namespace/name`).
    pub pods_deleted: Vec<String>,
    /// Objects kept because they have not expired (`Kind namespace/name`).
    pub kept: Vec<String>,
    /// Deletions that failed.
    pub errors: Vec<String>,
}

/// Lists the leftovers and deletes the expired ones (Jobs with Background
/// propagation). Listing errors end it (nothing half-done is reported as done);
/// deletion errors are collected.
pub async fn clean(client: &Client, config: &CleanConfig) -> Result<CleanReport, VerifyError> {
    let now = SystemTime::now();
    let mut report = CleanReport::default();
    let jobs: Vec<Job> = list(
        client,
        &config.namespaces,
        &format!("{MANAGED_BY_LABEL}={MANAGED_BY}"),
    )
    .await?;
    let pods: Vec<Pod> = list(client, &config.namespaces, RUN_LABEL).await?;
    for job in jobs {
        let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
        if !config.include_unexpired
            && !expired(
                job.annotations()
                    .get(EXPIRES_ANNOTATION)
                    .map(String::as_str),
                now,
            )
        {
            report.kept.push(format!("Job {ns}/{name}"));
            continue;
        }
        match Api::<Job>::namespaced(client.clone(), &ns)
            .delete(&name, &DeleteParams::background())
            .await
        {
            Ok(_) => report.jobs_deleted.push(format!("{ns}/{name}")),
            Err(e) if is_not_found(&e) => {}
            Err(e) => report
                .errors
                .push(format!("cannot delete Job {ns}/{name}: {}", describe(&e))),
        }
    }
    for pod in pods {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        if !config.include_unexpired
            && !expired(
                pod.annotations()
                    .get(EXPIRES_ANNOTATION)
                    .map(String::as_str),
                now,
            )
        {
            report.kept.push(format!("Pod {ns}/{name}"));
            continue;
        }
        match Api::<Pod>::namespaced(client.clone(), &ns)
            .delete(&name, &DeleteParams::background())
            .await
        {
            Ok(_) => report.pods_deleted.push(format!("{ns}/{name}")),
            Err(e) if is_not_found(&e) => {}
            Err(e) => report
                .errors
                .push(format!("cannot delete pod {ns}/{name}: {}", describe(&e))),
        }
    }
    report.jobs_deleted.sort();
    report.pods_deleted.sort();
    report.kept.sort();
    Ok(report)
}

/// Every object of kind `K` with `selector` in the namespaces.
async fn list<K>(
    client: &Client,
    namespaces: &Namespaces,
    selector: &str,
) -> Result<Vec<K>, VerifyError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let params = ListParams::default().labels(selector);
    let plural = K::plural(&Default::default()).into_owned();
    match namespaces {
        Namespaces::All => Api::<K>::all(client.clone())
            .list(&params)
            .await
            .map(|l| l.items)
            .map_err(|e| api_error(&format!("list {plural} in every namespace"), e)),
        Namespaces::Only(list) => {
            let mut out = Vec::new();
            for ns in list {
                let items = Api::<K>::namespaced(client.clone(), ns)
                    .list(&params)
                    .await
                    .map_err(|e| api_error(&format!("list {plural} in namespace {ns}"), e))?;
                out.extend(items.items);
            }
            Ok(out)
        }
    }
}
