# Everything a developer or CI runs. `make dev` and `make test` set up .venv on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: help venv dev test lint format bench soak deploy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt requirements-dev.txt
	@test -x $(PY) || { python=$$(scripts/find-python) && echo "creating $(VENV) with $$python" && "$$python" -m venv $(VENV); }
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(INSTALLED) ## create .venv with the pinned dependencies

dev: $(INSTALLED) ## the webhook, the token function and both emulators on localhost (Ctrl-C stops them)
	$(PY) -m clerk_sync dev

lint: $(INSTALLED) ## ruff check, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(INSTALLED) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Two workers, each with its own emulators: the suite mostly waits (servers, emulators, lock expiry).
# An emulator of your own (FIRESTORE_EMULATOR_HOST) can serve one process only: no workers then.
TEST_WORKERS ?= $(if $(FIRESTORE_EMULATOR_HOST),0,2)
test: lint ## lint, then the whole test suite against real emulators, on TEST_WORKERS workers
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

soak: $(INSTALLED) ## long delivery simulations only (thousands of events; SIM_SEED=N replays one)
	$(PY) -m pytest -m soak -s

# Deploy (docs/deploy.md). `make -n deploy PROJECT=my-project` prints the command without running it.
PROJECT ?=
REGION ?= us-central1
FUNCTION ?= clerk-webhook
SECRET ?= clerk-webhook-signing-secret
SECRET_VERSION ?= latest
SERVICE_ACCOUNT ?= clerk-webhook@$(PROJECT).iam.gserviceaccount.com
# One vCPU, 8 deliveries at once (each mostly waits on Firestore); gunicorn's THREADS follows it.
CONCURRENCY ?= 8
MAX_INSTANCES ?= 10
# More variables for the function, e.g. ENV_VARS=FIRESTORE_DATABASE=clerk (--set-env-vars replaces all).
ENV_VARS ?=
FIREBASE ?= firebase
FIRESTORE_DATABASE ?= (default)
USERS_COLLECTION ?= users
ORGANIZATIONS_COLLECTION ?= organizations
REPLACE_RULES ?=
comma := ,
require-project = $(if $(strip $(PROJECT)),,$(error PROJECT is not set: run `make $@ PROJECT=your-gcp-project-id`))

.PHONY: deploy-rules ttl indexes

deploy: ## deploy the function to Cloud Functions gen2 (PROJECT=... required)
	$(require-project)
	gcloud functions deploy $(FUNCTION) --gen2 --runtime=python313 --region=$(REGION) \
	  --source=. --ignore-file=.gcloudignore --entry-point=clerk_webhook \
	  --trigger-http --allow-unauthenticated \
	  --service-account=$(SERVICE_ACCOUNT) \
	  --set-secrets=CLERK_WEBHOOK_SIGNING_SECRET=$(SECRET):$(SECRET_VERSION) \
	  --set-env-vars=THREADS=$(CONCURRENCY),GOOGLE_CLOUD_PROJECT=$(PROJECT)$(if $(ENV_VARS),$(comma)$(ENV_VARS)) \
	  --memory=256Mi --cpu=1 --concurrency=$(CONCURRENCY) --timeout=15s --max-instances=$(MAX_INSTANCES) \
	  --project=$(PROJECT)

# Firestore setup for the database the function writes: FIRESTORE_DATABASE, USERS_COLLECTION and
# ORGANIZATIONS_COLLECTION must be what the function is deployed with (ENV_VARS).
RULES_DIR := build/rules
deploy-rules: $(INSTALLED) ## publish the security rules; replaces the database's whole ruleset (REPLACE_RULES=yes)
	$(require-project)
	$(if $(filter yes,$(REPLACE_RULES)),,$(error $(replace-rules-warning)))
	$(PY) -m clerk_sync rules --output $(RULES_DIR)/firestore.rules --firebase-json $(RULES_DIR)/firebase.json --database '$(FIRESTORE_DATABASE)'
	$(FIREBASE) deploy --only firestore:rules --config $(RULES_DIR)/firebase.json --project $(PROJECT)

replace-rules-warning = `make deploy-rules` replaces every security rule of database $(FIRESTORE_DATABASE) in \
  project $(PROJECT). If your app has rules of its own, merge the block that \
  `python3 -m clerk_sync rules --block` prints into them and deploy yours instead (docs/deploy.md, step 6). \
  For a database of its own, confirm: `make deploy-rules PROJECT=$(PROJECT) REPLACE_RULES=yes`

ttl: ## let Firestore expire old webhook_events records (PROJECT=... required)
	$(require-project)
	gcloud firestore fields ttls update expires_at --collection-group=webhook_events --enable-ttl \
	  --database='$(FIRESTORE_DATABASE)' --project=$(PROJECT)

# The collection-group ids: the last segment of each path (tenants/acme/users -> users).
users-group = $(lastword $(subst /, ,$(USERS_COLLECTION)))
organizations-group = $(lastword $(subst /, ,$(ORGANIZATIONS_COLLECTION)))
FIRESTORE_ADMIN_API ?= https://firestore.googleapis.com/v1
USER_ID_INDEX = {"indexConfig": {"indexes": [ \
  {"queryScope": "COLLECTION", "fields": [{"fieldPath": "user_id", "order": "ASCENDING"}]}, \
  {"queryScope": "COLLECTION_GROUP", "fields": [{"fieldPath": "user_id", "order": "ASCENDING"}]}]}}

# group:field pairs nobody queries, exempted from single-field indexing: metadata maps (each key an
# index entry, 40,000 at most per document) and every timestamp the sync writes (values that rise
# with time keep a collection's index writes on one tablet, capped near 500 writes/s; docs/deploy.md).
EXEMPT_FIELDS = $(users-group):public_metadata $(users-group):unsafe_metadata \
  $(organizations-group):public_metadata memberships:public_metadata \
  $(foreach field,synced_at updated_at created_at last_sign_in_at,$(users-group):$(field)) \
  $(foreach field,synced_at updated_at created_at,$(organizations-group):$(field) memberships:$(field)) \
  webhook_events:svix_id webhook_events:received_at webhook_events:expires_at email_claims:claimed_at \
  $(foreach group,user_tombstones organization_tombstones membership_tombstones,$(group):deleted_at $(group):recorded_at)
exempt-field = gcloud firestore indexes fields update $(word 2,$(subst :, ,$(1))) --collection-group=$(word 1,$(subst :, ,$(1))) \
  --disable-indexes --database='$(FIRESTORE_DATABASE)' --project=$(PROJECT)

indexes: ## exempt metadata and timestamps from indexing; memberships queryable by user_id (PROJECT=... required)
	$(require-project)
	$(foreach pair,$(EXEMPT_FIELDS),$(call exempt-field,$(pair))$(newline))	curl --fail-with-body --silent --show-error --max-time 60 -X PATCH \
	  -H "Authorization: Bearer $$(gcloud auth print-access-token)" -H "Content-Type: application/json" \
	  '$(FIRESTORE_ADMIN_API)/projects/$(PROJECT)/databases/$(FIRESTORE_DATABASE)/collectionGroups/memberships/fields/user_id?updateMask=indexConfig' \
	  -d '$(USER_ID_INDEX)'

bench: $(INSTALLED) ## benchmarks (cold start, latency, round trips, round-trip delay, memory, backlog, roles): print tables, keep bench/results/
	@for script in cold_start latency round_trips round_trip_delay memory backlog roles; do \
	  echo "=== bench/$$script.py"; $(PY) bench/$$script.py || exit 1; \
	done

clean: ## remove the virtualenv, node_modules, rendered rules, the built client and caches
	rm -rf $(VENV) node_modules build client/dist .mypy_cache .ruff_cache .pytest_cache .hypothesis

# --- firebase_token: Clerk session token -> Firebase custom token (docs/reading-from-your-app.md) ---

# The Firebase Auth emulator and JS SDK the token tests use (package-lock.json pins them). Install
# scripts are skipped: nothing the tests use needs them, and some would try to download binaries.
NODE_INSTALLED := node_modules/.installed

$(NODE_INSTALLED): package.json package-lock.json
	@command -v npm >/dev/null || { echo "make dev and make test need Node.js 20+ and npm on PATH (the Auth emulator)" >&2; exit 1; }
	npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

.PHONY: node-modules docs-ts client generate deploy-token grant-token-signing

node-modules: $(NODE_INSTALLED) ## install node_modules (Auth emulator, Firebase JS SDK, TypeScript) with npm ci
test: $(NODE_INSTALLED)
dev: $(NODE_INSTALLED)

# The TypeScript client apps install (docs/reading-from-your-app.md): strict, into client/dist/.
# node_modules/clerk-firestore-sync links to client/ (package.json), so the docs' snippets import it built.
client: $(NODE_INSTALLED) ## build the TypeScript client package (client/dist/) with tsc, strict
	node_modules/.bin/tsc -p client

# What clerk_sync/documents.py declares, written out: the client's types, the JSON Schema, the data-model tables.
generate: $(INSTALLED) ## regenerate client/src/documents.ts, client/clerk-sync.schema.json, docs/data-model.md's tables
	$(PY) -m tools.generate

# The docs' TypeScript blocks as files (each names its own), then tsc over them: strict, no output.
# tsx runs the Node ones from there (docs/reading-from-your-app.md#try-it-locally).
DOCS_TS := build/docs-ts
docs-ts: $(INSTALLED) client ## build the client, write the docs' TypeScript to build/docs-ts/ and type-check it (strict)
	$(PY) -m tools.snippets $(DOCS_TS)
	node_modules/.bin/tsc --noEmit -p tsconfig.docs.json

TOKEN_FUNCTION ?= clerk-firebase-token
TOKEN_SERVICE_ACCOUNT ?= clerk-firebase-token@$(PROJECT).iam.gserviceaccount.com
# The app's origins, comma-separated (becomes CLERK_AUTHORIZED_PARTIES), e.g. https://app.example.com
AUTHORIZED_PARTIES ?=
JWT_KEY_SECRET ?= clerk-jwt-key
JWT_KEY_SECRET_VERSION ?= latest
TOKEN_MAX_INSTANCES ?= 10
# More variables for the token function, @-separated, e.g. TOKEN_ENV_VARS=ALLOW_PENDING_SESSIONS=true
TOKEN_ENV_VARS ?=
require-parties = $(if $(strip $(AUTHORIZED_PARTIES)),,$(error AUTHORIZED_PARTIES is not set: run `make $@ PROJECT=your-gcp-project-id AUTHORIZED_PARTIES=https://your.app.origin`))

# `^@^` makes @ gcloud's separator, since CLERK_AUTHORIZED_PARTIES itself holds commas.
deploy-token: ## deploy firebase_token as its own function (PROJECT=... AUTHORIZED_PARTIES=... required)
	$(require-project)
	$(require-parties)
	gcloud functions deploy $(TOKEN_FUNCTION) --gen2 --runtime=python313 --region=$(REGION) \
	  --source=. --ignore-file=.gcloudignore --entry-point=firebase_token \
	  --trigger-http --allow-unauthenticated \
	  --service-account=$(TOKEN_SERVICE_ACCOUNT) \
	  --set-secrets=CLERK_JWT_KEY=$(JWT_KEY_SECRET):$(JWT_KEY_SECRET_VERSION) \
	  --set-env-vars=^@^THREADS=$(CONCURRENCY)@GOOGLE_CLOUD_PROJECT=$(PROJECT)@CLERK_AUTHORIZED_PARTIES=$(AUTHORIZED_PARTIES)$(if $(TOKEN_ENV_VARS),@$(TOKEN_ENV_VARS)) \
	  --memory=256Mi --cpu=1 --concurrency=$(CONCURRENCY) --timeout=10s --max-instances=$(TOKEN_MAX_INSTANCES) \
	  --project=$(PROJECT)
	@echo "Custom tokens are signed through IAM signBlob: once per project run make grant-token-signing PROJECT=$(PROJECT)"

grant-token-signing: ## let the token function's service account sign tokens as itself (PROJECT=... required)
	$(require-project)
	gcloud iam service-accounts add-iam-policy-binding $(TOKEN_SERVICE_ACCOUNT) \
	  --member=serviceAccount:$(TOKEN_SERVICE_ACCOUNT) --role=roles/iam.serviceAccountTokenCreator \
	  --project=$(PROJECT)

# Monitoring (docs/monitoring.md): log-based metrics and alert policies from monitoring/*.
# `make -n monitoring PROJECT=my-project` prints every gcloud command without running anything.
# NOTIFY=projects/P/notificationChannels/ID[,...] adds notification channels to every policy.
NOTIFY ?=
MONITORING_METRICS := $(sort $(wildcard monitoring/metrics/*.json))
MONITORING_POLICIES := $(sort $(wildcard monitoring/policies/*.json))
define newline


endef
# `create` refuses an existing name, so update what exists. The metric's name is its file's name.
apply-metric = if gcloud logging metrics describe $(basename $(notdir $(1))) --project=$(PROJECT) >/dev/null 2>&1; \
  then gcloud logging metrics update $(basename $(notdir $(1))) --config-from-file=$(1) --project=$(PROJECT); \
  else gcloud logging metrics create $(basename $(notdir $(1))) --config-from-file=$(1) --project=$(PROJECT); fi
# Policies get ids, not names: each file's userLabels.clerk_sync_policy (its file's name) finds it
# again. A failed lookup stops here rather than create a second copy.
apply-policy = id=$$(gcloud alpha monitoring policies list --project=$(PROJECT) \
  --filter='userLabels.clerk_sync_policy=$(basename $(notdir $(1)))' --format='value(name)') && \
  if [ -z "$$id" ]; then gcloud alpha monitoring policies create --policy-from-file=$(1) --project=$(PROJECT)$(if $(NOTIFY), --notification-channels=$(NOTIFY)); \
  else gcloud alpha monitoring policies update "$$id" --policy-from-file=$(1) --project=$(PROJECT)$(if $(NOTIFY), --set-notification-channels=$(NOTIFY)); fi

.PHONY: monitoring

monitoring: ## log-based metrics and alert policies from monitoring/ (PROJECT=... required, NOTIFY=... optional)
	$(require-project)
	$(foreach file,$(MONITORING_METRICS),$(call apply-metric,$(file))$(newline))
	$(foreach file,$(MONITORING_POLICIES),$(call apply-policy,$(file))$(newline))

# --- clerk_reconcile: drift repaired on a schedule (docs/operations.md) ---
# Never reachable without authentication: Cloud Run checks Cloud Scheduler's OIDC token, and the
# function checks it again (audience, invoker). `make -n deploy-reconcile schedule PROJECT=p` prints all.
RECONCILE_FUNCTION ?= clerk-reconcile
RECONCILE_SERVICE_ACCOUNT ?= clerk-reconcile@$(PROJECT).iam.gserviceaccount.com
SCHEDULER_SERVICE_ACCOUNT ?= clerk-scheduler@$(PROJECT).iam.gserviceaccount.com
CLERK_SECRET_KEY_SECRET ?= clerk-secret-key
RECONCILE_URL ?= https://$(REGION)-$(PROJECT).cloudfunctions.net/$(RECONCILE_FUNCTION)
# A run stops itself (checkpointed) after RECONCILE_BUDGET seconds, well before the 30-minute timeout.
RECONCILE_BUDGET ?= 1500
# More variables, ;-separated, e.g. RECONCILE_ENV_VARS='FIRESTORE_DATABASE=clerk;USERS_COLLECTION=tenants/acme/users'
RECONCILE_ENV_VARS ?=
INCREMENTAL_SCHEDULE ?= 17 * * * *
FULL_SCHEDULE ?= 43 3 * * *
TIME_ZONE ?= Etc/UTC

.PHONY: deploy-reconcile schedule

# `^;^` makes ; gcloud's separator: RECONCILE_INVOKERS holds service-account emails (an @ each) and
# commas between them, so neither , nor @ can separate the variables here.
deploy-reconcile: ## deploy clerk_reconcile, callable only by the scheduler's service account (PROJECT=... required)
	$(require-project)
	gcloud functions deploy $(RECONCILE_FUNCTION) --gen2 --runtime=python313 --region=$(REGION) \
	  --source=. --ignore-file=.gcloudignore --entry-point=clerk_reconcile \
	  --trigger-http --no-allow-unauthenticated \
	  --service-account=$(RECONCILE_SERVICE_ACCOUNT) \
	  --set-secrets=CLERK_SECRET_KEY=$(CLERK_SECRET_KEY_SECRET):latest \
	  '--set-env-vars=^;^GOOGLE_CLOUD_PROJECT=$(PROJECT);RECONCILE_AUDIENCE=$(RECONCILE_URL);RECONCILE_INVOKERS=$(SCHEDULER_SERVICE_ACCOUNT);RECONCILE_BUDGET_SECONDS=$(RECONCILE_BUDGET)$(if $(RECONCILE_ENV_VARS),;$(RECONCILE_ENV_VARS))' \
	  --memory=512Mi --cpu=1 --concurrency=1 --timeout=1800s --max-instances=1 \
	  --project=$(PROJECT)
	gcloud functions add-invoker-policy-binding $(RECONCILE_FUNCTION) --region=$(REGION) \
	  --member=serviceAccount:$(SCHEDULER_SERVICE_ACCOUNT) --project=$(PROJECT)

# create, or update what exists: running `make schedule` again applies changed schedules.
schedule-job = if gcloud scheduler jobs describe $(1) --location=$(REGION) --project=$(PROJECT) >/dev/null 2>&1; \
  then verb=update; else verb=create; fi; \
  gcloud scheduler jobs $$verb http $(1) --location=$(REGION) --schedule='$(2)' --time-zone=$(TIME_ZONE) \
  --uri='$(RECONCILE_URL)?mode=$(3)' --http-method=POST \
  --oidc-service-account-email=$(SCHEDULER_SERVICE_ACCOUNT) --oidc-token-audience=$(RECONCILE_URL) \
  --attempt-deadline=1800s --project=$(PROJECT)

schedule: ## Cloud Scheduler jobs: incremental hourly, full daily (PROJECT=... required)
	$(require-project)
	$(call schedule-job,clerk-reconcile-incremental,$(INCREMENTAL_SCHEDULE),incremental)
	$(call schedule-job,clerk-reconcile-full,$(FULL_SCHEDULE),full)
