//! AWS EC2 instance metadata (IMDSv1 and IMDSv2), the EKS Pod Identity agent and ECS task
//! metadata: the protocol's rules as pure functions, as [`crate::imds`] is for Azure.
