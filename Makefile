# Everything a developer or CI runs. `make dev` and `make test` set up .venv on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: help venv dev test lint format bench soak deploy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt requirements-dev.txt
	@test -x $(PY) || { python=$$(scripts/find-python) && echo "creating $(VENV) with $$python" && "$$python" -m venv $(VENV); }
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(INSTALLED) ## create .venv with the pinned dependencies

dev: $(INSTALLED) ## run the emulator and the function on localhost (Ctrl-C stops both)
	$(PY) -m clerk_sync dev

lint: $(INSTALLED) ## ruff check, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(INSTALLED) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint ## lint, then the whole test suite against a real Firestore emulator
	$(PY) -m pytest

soak: $(INSTALLED) ## long delivery simulations only (thousands of events; SIM_SEED=N replays one)
	$(PY) -m pytest -m soak -s

# Deploy (README "Deploy"). `make -n deploy PROJECT=my-project` prints the command without running it.
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
  `python -m clerk_sync rules --block` prints into them and deploy yours instead (docs/deploy.md, step 6). \
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

indexes: ## metadata maps unindexed; memberships queryable by user_id across organizations (PROJECT=... required)
	$(require-project)
	gcloud firestore indexes fields update public_metadata --collection-group=$(users-group) --disable-indexes --database='$(FIRESTORE_DATABASE)' --project=$(PROJECT)
	gcloud firestore indexes fields update unsafe_metadata --collection-group=$(users-group) --disable-indexes --database='$(FIRESTORE_DATABASE)' --project=$(PROJECT)
	gcloud firestore indexes fields update public_metadata --collection-group=$(organizations-group) --disable-indexes --database='$(FIRESTORE_DATABASE)' --project=$(PROJECT)
	gcloud firestore indexes fields update public_metadata --collection-group=memberships --disable-indexes --database='$(FIRESTORE_DATABASE)' --project=$(PROJECT)
	curl --fail-with-body --silent --show-error --max-time 60 -X PATCH \
	  -H "Authorization: Bearer $$(gcloud auth print-access-token)" -H "Content-Type: application/json" \
	  '$(FIRESTORE_ADMIN_API)/projects/$(PROJECT)/databases/$(FIRESTORE_DATABASE)/collectionGroups/memberships/fields/user_id?updateMask=indexConfig' \
	  -d '$(USER_ID_INDEX)'

bench: $(INSTALLED) ## benchmarks (cold start, latency, round trips, round-trip delay, memory): print tables, keep bench/results/
	@for script in cold_start latency round_trips round_trip_delay memory; do \
	  echo "=== bench/$$script.py"; $(PY) bench/$$script.py || exit 1; \
	done

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

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
