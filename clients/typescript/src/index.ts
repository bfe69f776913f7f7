export * from "./errors.js";
export * from "./service.js";
export type * as router from "./generated/router.js";
export type * as external from "./generated/external.js";
export type * as collections from "./generated/collections.js";
export type * as analytics from "./generated/analytics.js";
