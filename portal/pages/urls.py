"""The program-manager pages (``portal.pages``); the accounts pages are Django's own views."""

from django.contrib.auth import views as auth_views
from django.urls import path

from portal.pages import dashboard, deliveries, exports, members, offers

urlpatterns = [
    path("", dashboard.DashboardView.as_view(), name="dashboard"),
    path("members/", members.MemberSearchView.as_view(), name="members"),
    path("members/<int:sparkfly_id>/", members.MemberDetailView.as_view(), name="member"),
    path("offers/", offers.OfferListView.as_view(), name="offers"),
    path("offers/<int:sparkfly_id>/", offers.OfferDetailView.as_view(), name="offer"),
    path("deliveries/", deliveries.DeliveryListView.as_view(), name="deliveries"),
    path("deliveries/<int:pk>/retry/", deliveries.DeliveryRetryView.as_view(), name="delivery-retry"),
    path("deliveries/<int:pk>/replay/", deliveries.DeliveryReplayView.as_view(), name="delivery-replay"),
    path("redemptions/export.csv", exports.RedemptionExportView.as_view(), name="redemptions-export"),
    # Accounts. Logging out takes a POST (Django 5), which the header's button sends.
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password-reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path("accounts/password-reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("accounts/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
]
