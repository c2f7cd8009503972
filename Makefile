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

deploy-rules: ## publish firestore.rules with the Firebase CLI (PROJECT=... required)
	$(require-project)
	$(FIREBASE) deploy --only firestore:rules --project $(PROJECT)

ttl: ## let Firestore expire old webhook_events records (PROJECT=... required)
	$(require-project)
	gcloud firestore fields ttls update expires_at --collection-group=webhook_events --enable-ttl --project=$(PROJECT)

indexes: ## exempt users' metadata maps from indexing (PROJECT=... required)
	$(require-project)
	gcloud firestore indexes fields update public_metadata --collection-group=users --disable-indexes --project=$(PROJECT)
	gcloud firestore indexes fields update unsafe_metadata --collection-group=users --disable-indexes --project=$(PROJECT)

bench: $(INSTALLED) ## benchmarks (cold start, latency, round trips, memory): print tables, keep bench/results/
	@for script in cold_start latency round_trips memory; do \
	  echo "=== bench/$$script.py"; $(PY) bench/$$script.py || exit 1; \
	done

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# --- firebase_token: Clerk session token -> Firebase custom token (docs/reading-from-your-app.md) ---

# The Firebase Auth emulator and JS SDK the token tests use (package-lock.json pins them). Install
# scripts are skipped: nothing the tests use needs them, and some would try to download binaries.
NODE_INSTALLED := node_modules/.installed

$(NODE_INSTALLED): package.json package-lock.json
	@command -v npm >/dev/null || { echo "the token tests need Node.js 20+ and npm on PATH" >&2; exit 1; }
	npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

.PHONY: node-modules deploy-token grant-token-signing

node-modules: $(NODE_INSTALLED) ## install node_modules (Auth emulator, Firebase JS SDK) with npm ci
test: $(NODE_INSTALLED)

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
