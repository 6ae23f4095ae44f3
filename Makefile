# The two user commands: `make demo` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.stamps/ready

# ROS processes started here stay on this machine (loopback discovery, a domain of our own,
# UDP only so killed processes leave no stale shared-memory segments).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 90 + 5 )))
export FASTDDS_BUILTIN_TRANSPORTS ?= UDPv4
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo lint bench clean help

help:
	@echo "make demo   - set up if needed, run the default LIBERO episode through the ROS graph"
	@echo "make test   - set up if needed, run every test"
	@echo "make setup  - only create/refresh .venv"
	@echo "make lint   - ruff"

$(STAMP): scripts/setup_env.sh $(wildcard requirements/*.txt) setup.py vla_ros_msgs/CMakeLists.txt $(wildcard vla_ros_msgs/msg/* vla_ros_msgs/srv/* vla_ros_msgs/action/*)
	bash scripts/setup_env.sh
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) -m vla_ros.cli demo $(DEMO_ARGS)

clean:
	rm -rf build install log .pytest_cache
