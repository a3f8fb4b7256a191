#!/usr/bin/env bash
# Checks the AWS integration (integrations/aws/): lints the CloudFormation templates with
# cfn-lint (warnings fail too), validates the standalone IAM policy JSON, and runs the rotation
# Lambda hook's unit tests. Installs cfn-lint from PyPI when it is not on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CFN_LINT=cfn-lint
if ! command -v cfn-lint >/dev/null 2>&1; then
    pip install --quiet cfn-lint
    hash -r
    if ! command -v cfn-lint >/dev/null 2>&1; then
        # pip's scripts dir may not be on PATH (or a pyenv shim not yet rehashed).
        CFN_LINT="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/cfn-lint"
    fi
fi

# Exit codes are a bit mask (2 errors, 4 warnings, 8 informational); any of them fails.
"$CFN_LINT" -- integrations/aws/cloudformation/*.yaml
echo "cfn-lint: integrations/aws/cloudformation/*.yaml clean"

python3 -m json.tool integrations/aws/iam/sever-policy.json >/dev/null
echo "json: integrations/aws/iam/sever-policy.json valid"

python3 -m unittest discover -s integrations/aws -v
