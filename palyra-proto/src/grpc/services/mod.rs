//! The standard services of a gRPC listener: `grpc.health.v1.Health` and
//! `grpc.reflection.v1.ServerReflection` (v1 and v1alpha).

use super::codec::{Code, Status};
use super::service::{decode, CallHandler, CallInfo, Reply, Service, Unary};
use crate::pb::grpc::health::v1::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};
use crate::pb::grpc::reflection::v1::{
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    ErrorResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse,
};
use bytes::Bytes;
use prost::Message;
use prost_types::FileDescriptorProto;
use std::sync::Arc;

/// `grpc.health.v1.Health`: the listener's services are SERVING; unknown names are NOT_FOUND.
pub struct HealthService {
    services: Vec<String>,
}

impl HealthService {
    /// Health for `services` (the empty name means the whole server).
    pub fn new(services: &[&str]) -> Self {
        Self {
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn status(&self, request: &HealthCheckRequest) -> Result<Vec<u8>, Status> {
        if request.service.is_empty() || self.services.contains(&request.service) {
            Ok(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            }
            .encode_to_vec())
        } else {
            Err(Status::new(
                Code::NotFound,
                format!("unknown service {}", request.service),
            ))
        }
    }
}

struct Watch {
    services: Vec<String>,
}

impl CallHandler for Watch {
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        let health = HealthService {
            services: self.services.clone(),
        };
        match decode::<HealthCheckRequest>(&message) {
            Ok(request) => match health.status(&request) {
                Ok(response) => reply.message(response),
                // Watch reports unknown services as SERVICE_UNKNOWN and keeps watching.
                Err(_) => reply.message(
                    HealthCheckResponse {
                        status: ServingStatus::ServiceUnknown as i32,
                    }
                    .encode_to_vec(),
                ),
            },
            Err(status) => reply.finish(status),
        }
    }

    fn on_half_close(&mut self, _reply: &mut Reply) {
        // The stream stays open: a status change would be pushed (ours never change while running).
    }
}

impl Service for HealthService {
    fn name(&self) -> &'static str {
        "grpc.health.v1.Health"
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        match call.method.as_str() {
            "Check" => {
                let health = HealthService {
                    services: self.services.clone(),
                };
                Some(Unary::boxed(move |bytes: Bytes| {
                    health.status(&decode::<HealthCheckRequest>(&bytes)?)
                }))
            }
            "Watch" => Some(Box::new(Watch {
                services: self.services.clone(),
            })),
            _ => None,
        }
    }
}

/// `grpc.reflection.v1.ServerReflection` over the embedded descriptor set.
#[derive(Clone)]
pub struct ReflectionService {
    files: Arc<Vec<FileDescriptorProto>>,
    services: Vec<String>,
    name: &'static str,
}

impl ReflectionService {
    /// Reflection for `services`, answered from `descriptor_set` (an encoded FileDescriptorSet).
    pub fn new(descriptor_set: &[u8], services: &[&str]) -> Result<Self, prost::DecodeError> {
        let set = prost_types::FileDescriptorSet::decode(descriptor_set)?;
        Ok(Self {
            files: Arc::new(set.file),
            services: services.iter().map(|s| s.to_string()).collect(),
            name: "grpc.reflection.v1.ServerReflection",
        })
    }

    /// The same service under its pre-v1 name, `grpc.reflection.v1alpha.ServerReflection`
    /// (identical messages), for clients that only know that one.
    pub fn v1alpha(&self) -> Self {
        Self {
            name: "grpc.reflection.v1alpha.ServerReflection",
            ..self.clone()
        }
    }
}

struct ReflectionCall {
    files: Arc<Vec<FileDescriptorProto>>,
    services: Vec<String>,
}

impl ReflectionCall {
    fn file_named(&self, name: &str) -> Option<&FileDescriptorProto> {
        self.files.iter().find(|f| f.name() == name)
    }

    /// The file defining a fully qualified symbol (message, enum, service or method).
    fn file_with_symbol(&self, symbol: &str) -> Option<&FileDescriptorProto> {
        self.files.iter().find(|f| {
            let package = f.package();
            let local = match symbol
                .strip_prefix(package)
                .and_then(|s| s.strip_prefix('.'))
            {
                Some(local) => local,
                None => return false,
            };
            let top = local.split('.').next().unwrap_or("");
            f.message_type.iter().any(|m| m.name() == top)
                || f.enum_type.iter().any(|e| e.name() == top)
                || f.service.iter().any(|s| s.name() == top)
        })
    }

    /// `file` and, transitively, what it imports (reflection clients expect dependencies).
    fn with_dependencies(&self, file: &FileDescriptorProto) -> Vec<Vec<u8>> {
        let mut out: Vec<&FileDescriptorProto> = vec![file];
        let mut i = 0;
        while i < out.len() {
            for dep in &out[i].dependency {
                if let Some(f) = self.file_named(dep) {
                    if !out.iter().any(|o| o.name() == f.name()) {
                        out.push(f);
                    }
                }
            }
            i += 1;
        }
        out.into_iter().map(|f| f.encode_to_vec()).collect()
    }

    fn answer(&self, request: &ServerReflectionRequest) -> MessageResponse {
        let not_found = |what: String| {
            MessageResponse::ErrorResponse(ErrorResponse {
                error_code: Code::NotFound as i32,
                error_message: what,
            })
        };
        match &request.message_request {
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => match self.file_named(name) {
                Some(file) => MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                    file_descriptor_proto: self.with_dependencies(file),
                }),
                None => not_found(format!("file {name} not found")),
            },
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                match self.file_with_symbol(symbol) {
                    Some(file) => MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                        file_descriptor_proto: self.with_dependencies(file),
                    }),
                    None => not_found(format!("symbol {symbol} not found")),
                }
            }
            Some(MessageRequest::FileContainingExtension(_))
            | Some(MessageRequest::AllExtensionNumbersOfType(_)) => {
                not_found("no extensions are defined".into())
            }
            None => MessageResponse::ErrorResponse(ErrorResponse {
                error_code: Code::InvalidArgument as i32,
                error_message: "empty reflection request".into(),
            }),
        }
    }
}

impl CallHandler for ReflectionCall {
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        match decode::<ServerReflectionRequest>(&message) {
            Ok(request) => {
                let response = ServerReflectionResponse {
                    valid_host: request.host.clone(),
                    message_response: Some(self.answer(&request)),
                    original_request: Some(request),
                };
                reply.message(response.encode_to_vec());
            }
            Err(status) => reply.finish(status),
        }
    }

    fn on_half_close(&mut self, reply: &mut Reply) {
        reply.finish(Status::ok());
    }
}

impl Service for ReflectionService {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        (call.method == "ServerReflectionInfo").then(|| {
            Box::new(ReflectionCall {
                files: Arc::clone(&self.files),
                services: self.services.clone(),
            }) as Box<dyn CallHandler>
        })
    }
}

#[cfg(test)]
mod tests;
